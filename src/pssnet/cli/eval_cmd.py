"""``pssnet eval``: recalibrate, evaluate and select the subnets of a trained run; write the
Pareto report and the deployment bundle."""

from __future__ import annotations

import argparse

from ..constraints import Constraint
from ..evaluation import SELECT_ON, EvalConfig
from ..fileio import output_dir
from ..workflows import evaluate_run_dir
from .args import non_negative_int, positive_int, seed


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a trained run: Pareto table/plot and deployment bundle",
        description="For every budget, recalibrate BN and evaluate the top-k subnets of its pool (a uniform run: "
                    "as many subnets drawn inside the budget), keep the best on a held-out split of the training "
                    "images, and report its test accuracy. Writes eval.json, pareto.csv, pareto.md, pareto.png "
                    "and adaptive.pt (the deployment bundle) into the run directory.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by pssnet train --out")
    p.add_argument("--top-k", type=positive_int, default=5, help="candidates per budget (default 5)")
    p.add_argument("--calib-batches", type=positive_int, default=16, help="BN recalibration batches per subnet (default 16)")
    p.add_argument("--holdout", type=non_negative_int, default=2000,
                   help="training images held out for selection when the run kept none out (default 2000, at most half)")
    p.add_argument("--select-on", choices=SELECT_ON, default="holdout",
                   help="split that picks the subnet per budget; 'test' is the reference's flattering way")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER_RUN_DIR",
                   help="runs to overlay (e.g. a uniform baseline); their eval.json is reused when made with the "
                        "same settings and data, otherwise they are evaluated again")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--data", metavar="SPEC", help="data spec to evaluate on (default: the one trained on)")
    p.add_argument("--out", metavar="DIR", help="output directory (default: RUN_DIR)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the held-out split and candidate search")
    p.add_argument("--constraint", action="append", default=[], metavar="TYPE:START:STOP:STEP",
                   help="budget grid for a run without pools (uniform); default: the run's own constraints")
    p.add_argument("--no-bundle", action="store_true", help="skip writing adaptive.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = EvalConfig(top_k=args.top_k, calib_batches=args.calib_batches, holdout=args.holdout,
                        select_on=args.select_on, batch_size=args.batch_size, seed=args.seed, device=args.device)
    constraints = [Constraint.parse(text) for text in args.constraint] or None
    if args.out is not None:
        output_dir(args.out, "--out")
    _, paths = evaluate_run_dir(args.run_dir, config, args.out, args.compare, args.data,
                                bundle=not args.no_bundle, constraints=constraints)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
