"""Evaluation of trained runs: candidate subnets per budget, BN recalibration, held-out
selection, test accuracy, and the ``pssnet eval`` pipeline on run directories.

Modules, lowest first: ``results`` (the ``eval.json`` schema), ``candidates`` (pool top-k or
search per budget), ``batches`` (fixed image sets, decoded once), ``evaluator`` (recalibrate,
then measure) and ``pipeline`` (run directory in; report and bundle out).
"""

from typing import Any

from .batches import Batches
from .candidates import pool_candidates, search_candidates
from .evaluator import SELECT_ON, EvalConfig, SubnetEvaluator, accuracy, evaluate_run, supernet_from_run
from .results import BudgetResult, Candidate, EvalResult, load_eval

_PIPELINE = ("evaluate_run_dir", "reuse_mismatch")

__all__ = ["SELECT_ON", "Batches", "BudgetResult", "Candidate", "EvalConfig", "EvalResult", "SubnetEvaluator",
           "accuracy", "evaluate_run", "load_eval", "pool_candidates", "search_candidates", "supernet_from_run",
           *_PIPELINE]


def __getattr__(name: str) -> Any:
    # The pipeline sits above pssnet.report and pssnet.deploy, which import the result schema
    # from this package; importing the pipeline here eagerly would make `import pssnet.report`
    # import the pipeline, which imports the half-initialised pssnet.report. So it loads on use.
    if name in _PIPELINE:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
