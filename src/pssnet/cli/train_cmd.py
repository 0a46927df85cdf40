"""``pssnet train``: train a supernet with PSS (or the uniform baseline), single- or multi-process."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .dataclass_args import add_flags, apply_flags, flags_of, given_paths, help_sections

_EPILOG = """\
examples:
  pssnet train --preset mini-mbv2 --out runs/mini --max-iters 200
  pssnet train --arch mobilenet_v2 --data fashion-mnist --constraint flops:11:24:1 \\
      --epochs 30 --batch-size 128 --out runs/fmnist
  pssnet train --out runs/fmnist --resume
  pssnet train --out runs/folder --resume --accept-data-change   # after removing a bad image
  torchrun --nproc_per_node 2 -m pssnet train --preset fmnist-mbv2 --out runs/ddp
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training.config import TrainConfig

    p = subparsers.add_parser(
        "train", help="train a supernet with Prioritized Subnet Sampling",
        description="Train a resource-adaptive supernet (sandwich rule, in-place distillation) with the PSS "
                    "sampler or the uniform baseline. Writes config.json, metrics.jsonl, tb/, checkpoints/ "
                    "and final.pt to --out.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags = flags_of(TrainConfig)  # every setting's flag comes from TrainConfig's fields
    sections = help_sections(p, flags)
    # --resume is an action of this command, not a setting; listed first in its section.
    sections["run"].add_argument("--resume", action="store_true",
                                 help="continue the run in --out from its newest checkpoint")
    sections["run"].add_argument("--accept-data-change", action="store_true",
                                 help="with --resume: continue on data whose files changed since the run began (a "
                                      "bad image removed or replaced), recording the change in "
                                      "RUN/data-changes.jsonl, instead of refusing")
    add_flags(p, flags, sections)
    p.set_defaults(func=run_train)


def build_config(args: argparse.Namespace):
    """The :class:`TrainConfig` from defaults, then ``--preset``, then explicit flags."""
    from ..training.config import TrainConfig, apply_preset

    config = TrainConfig()
    needs_lut = apply_preset(config, args.preset) if args.preset else []
    apply_flags(config, args, flags_of(TrainConfig))
    if ("batch_size",) in given_paths(args, flags_of(TrainConfig)):
        config.batch_is_global = False  # an explicit --batch-size is per process, as torchvision's references
    if not args.resume:
        if args.preset and not config.data:
            raise UserError(f"preset {args.preset} needs --data (e.g. folder:/data/imagenet or cifar10:DIR)")
        missing = sorted(set(needs_lut) - set(_lut_kinds(config.luts)))
        if missing:
            raise UserError(f"preset {args.preset} trains {', '.join(missing)}: pass --lut FILE for it "
                            "(build one with pssnet lut build)")
    return config


def asked_for(args: argparse.Namespace, config) -> set[tuple[str, ...]]:
    """The settings the user asked for: the flags given, and what ``--preset`` set."""
    from ..training.config import TrainConfig
    from ..options import declared_options

    paths = given_paths(args, flags_of(TrainConfig))
    if args.preset:
        defaults = TrainConfig()
        paths |= {o.path for o in declared_options(TrainConfig) if o.get(config) != o.get(defaults)}
    return paths


def _lut_kinds(paths: list[str]) -> list[str]:
    if not paths:
        return []
    from ..latency import load_tables

    return list(load_tables(paths))


def run_train(args: argparse.Namespace) -> int:
    from ..training import Trainer
    from ..training.distributed import init_distributed, shutdown_distributed
    from ..training.interrupt import TrainingInterrupted

    config = build_config(args)
    ctx = init_distributed(config.device, config.dist_timeout_minutes)
    try:
        out = Trainer(config, ctx).run(resume=args.resume, given=asked_for(args, config),
                                       accept_data_change=args.accept_data_change)
    except TrainingInterrupted as stop:
        if ctx.is_main:
            print(f"pssnet train: {stop}", file=sys.stderr, flush=True)
        return stop.exit_status
    except BaseException as exc:
        if ctx.enabled:  # name the failing rank; torchrun then stops the others and exits non-zero
            print(f"pssnet train: rank {ctx.rank} of {ctx.world_size} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        shutdown_distributed()
    if ctx.is_main:
        tensorboard = ", tb/" if (out / "tb").is_dir() else ""  # not without the tensorboard extra
        print(f"trained {out}: final.pt, metrics.jsonl{tensorboard} (evaluate with: pssnet eval {out})")
    return 0

