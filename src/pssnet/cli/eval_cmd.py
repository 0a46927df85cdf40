"""``pssnet eval``: recalibrate, evaluate and select the subnets of a trained run; write the
Pareto report and the deployment bundle."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

from ..constraints import Constraint
from ..evaluation import EvalConfig
from ..fileio import output_dir
from ..options import option
from ..workflows import evaluate_run_dir
from .dataclass_args import add_config_flags, config_from_args


@dataclass(frozen=True)
class EvalCommand:
    """What ``pssnet eval`` was asked for: the evaluation's settings and where it reads and writes."""

    run_dir: str = option(positional=True, metavar="RUN_DIR", help="directory written by pssnet train --out")
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    compare: list[str] = option(nargs="+", metavar="OTHER_RUN_DIR", default_factory=list,
                                help="runs to overlay (e.g. a uniform baseline); their eval.json is reused when made "
                                     "with the same settings and data, otherwise they are evaluated again")
    data: Optional[str] = option(None, metavar="SPEC", help="data spec to evaluate on (default: the one trained on)")
    out: Optional[str] = option(None, metavar="DIR", help="output directory (default: RUN_DIR)")
    constraints: list[str] = option(flag="--constraint", repeat=True, metavar="TYPE:START:STOP:STEP",
                                    default_factory=list,
                                    help="budget grid for a run without pools (uniform); default: the run's own "
                                         "constraints")
    bundle: bool = option(True, flag="--no-bundle", help="skip writing adaptive.pt and adaptive/")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a trained run: Pareto table/plot and deployment bundle",
        description="For every budget, recalibrate BN and evaluate the top-k subnets of its pool (a uniform run: "
                    "as many subnets drawn inside the budget), keep the best on a held-out split of the training "
                    "images, and report its test accuracy. Writes eval.json, pareto.csv, pareto.md, pareto.png "
                    "and the deployment bundle, adaptive.pt and (with the hub extra) the Hub folder adaptive/, "
                    "into the run directory.")
    add_config_flags(p, EvalCommand)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command: EvalCommand = config_from_args(EvalCommand, args)
    constraints = [Constraint.parse(text) for text in command.constraints] or None
    # Checked before the evaluation, which takes minutes: its results are written at the end.
    output_dir(command.out if command.out is not None else command.run_dir,
               "--out" if command.out is not None else "RUN_DIR (the default --out)")
    _, paths = evaluate_run_dir(command.run_dir, command.evaluation, command.out, command.compare, command.data,
                                bundle=command.bundle, constraints=constraints)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
