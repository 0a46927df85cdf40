"""Evaluation of trained runs: candidate subnets per budget, BN recalibration, held-out
selection and test accuracy. (The ``pssnet eval`` workflow on run directories, which also writes
the report and the bundle, is :mod:`pssnet.workflows.evaluate`.)

Modules, lowest first: ``results`` (the ``eval.json`` schema), ``candidates`` (pool top-k or
search per budget), ``batches`` (fixed image sets, decoded once) and ``evaluator`` (recalibrate,
then measure).
"""

from .batches import Batches
from .candidates import pool_candidates, search_candidates
from .evaluator import SELECT_ON, EvalConfig, SubnetEvaluator, accuracy, evaluate_run, supernet_from_run
from .results import BudgetResult, Candidate, EvalResult, load_eval

__all__ = ["SELECT_ON", "Batches", "BudgetResult", "Candidate", "EvalConfig", "EvalResult", "SubnetEvaluator",
           "accuracy", "evaluate_run", "load_eval", "pool_candidates", "search_candidates", "supernet_from_run"]
