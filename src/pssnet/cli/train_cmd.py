"""``pssnet train``: train a supernet with PSS (or the uniform baseline), single- or multi-process."""

from __future__ import annotations

import argparse
import sys

from ..architectures import ARCHITECTURES
from ..errors import UserError

_EPILOG = """\
examples:
  pssnet train --preset mini-mbv2 --out runs/mini --max-iters 200
  pssnet train --arch mobilenet_v2 --data fashion-mnist --constraint flops:11:24:1 \\
      --epochs 30 --batch-size 128 --out runs/fmnist
  pssnet train --out runs/fmnist --resume
  torchrun --nproc_per_node 2 -m pssnet train --preset fmnist-mbv2 --out runs/ddp
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..training.config import PRESETS

    p = subparsers.add_parser(
        "train", help="train a supernet with Prioritized Subnet Sampling",
        description="Train a resource-adaptive supernet (sandwich rule, in-place distillation) with the PSS "
                    "sampler or the uniform baseline. Writes config.json, metrics.jsonl, tb/, checkpoints/ "
                    "and final.pt to --out.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_argument_group("what to train")
    what.add_argument("--preset", choices=sorted(PRESETS), help="named set-up; explicit flags override it")
    what.add_argument("--arch", choices=sorted(ARCHITECTURES))
    what.add_argument("--data", metavar="SPEC", help="fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, "
                                                     "cifar100:DIR, folder:DIR or fashion-mnist-mini")
    what.add_argument("--constraint", action="append", metavar="TYPE:START:STOP:STEP",
                      help="budget grid, repeatable (flops, params, latency_cpu, latency_gpu); "
                           "TYPE:auto[:COUNT] spans the space's range")
    what.add_argument("--lut", action="append", metavar="FILE", help="latency table (pssnet lut build), repeatable")
    what.add_argument("--sampler", choices=["pss", "uniform"])
    what.add_argument("--small-input", action=argparse.BooleanOptionalAction, default=None,
                      help="stride-1 stem for 28-32 px images (default: by image size)")
    what.add_argument("--resolutions", metavar="MIN:MAX:STEP", help="override the resolution range")
    run = p.add_argument_group("run")
    run.add_argument("--out", required=True, metavar="DIR", help="run directory")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    run.add_argument("--epochs", type=int)
    run.add_argument("--batch-size", type=int, help="images per process and iteration")
    run.add_argument("--max-iters", type=int, help="stop after this many iterations (schedules shrink to fit)")
    run.add_argument("--seed", type=int)
    run.add_argument("--holdout", type=int, help="training images kept out for pssnet eval to select subnets on "
                                                 "(default 2000, at most a tenth; 0 trains on all)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"])
    run.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision")
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    run.add_argument("--num-workers", type=int, help="data-loader workers (default 0)")
    run.add_argument("--threads", type=int, help="torch CPU threads")
    run.add_argument("--log-every", type=int, help="iterations between metrics lines (default 10)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--checkpoint-minutes", type=float, help="minutes between checkpoints (default 10)")
    run.add_argument("--checkpoint-iters", type=int, help="also checkpoint every N iterations")
    run.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (default 3)")
    recipe = p.add_argument_group("recipe (defaults: the paper's)")
    recipe.add_argument("--lr", type=float, help="learning rate (default 0.3 x global batch / 1024)")
    recipe.add_argument("--momentum", type=float)
    recipe.add_argument("--no-nesterov", action="store_true")
    recipe.add_argument("--weight-decay", type=float)
    recipe.add_argument("--label-smoothing", type=float)
    recipe.add_argument("--warmup-epochs", type=float)
    pss = p.add_argument_group("PSS sampler")
    pss.add_argument("--pool-size", type=int)
    pss.add_argument("--ema", type=float, help="score EMA factor lambda (default 0.9)")
    pss.add_argument("--p-range", metavar="P0:P1", help="space-vs-pool probability schedule (default 1.0:0.01)")
    pss.add_argument("--t-range", metavar="T0:T1", help="softmax temperature schedule (default 1.0:0.01)")
    pss.add_argument("--map-samples", type=int, help="random subnets behind the space map (default 1000000)")
    pss.add_argument("--map-cache", metavar="DIR", help="space-map cache directory ('' disables)")
    p.set_defaults(func=run_train)


def _pair(text: str, flag: str) -> tuple[float, float]:
    try:
        a, b = (float(x) for x in text.split(":"))
    except ValueError:
        raise UserError(f"bad {flag} '{text}'; write two numbers as A:B, e.g. 1.0:0.01") from None
    return a, b


def _override(section: object, flags: dict) -> None:
    """Set the fields of a config section whose flag was given (None: not given)."""
    for key, value in flags.items():
        if value is not None:
            setattr(section, key, value)


def build_config(args: argparse.Namespace):
    """The :class:`TrainConfig` from defaults, then ``--preset``, then explicit flags."""
    from ..training.config import TrainConfig, apply_preset

    config = TrainConfig(out=args.out)
    needs_lut = apply_preset(config, args.preset) if args.preset else []
    direct = {"arch": args.arch, "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
              "max_iters": args.max_iters, "seed": args.seed, "holdout": args.holdout, "device": args.device, "amp": args.amp,
              "channels_last": args.channels_last, "num_workers": args.num_workers, "threads": args.threads,
              "log_every": args.log_every, "small_input": args.small_input}
    _override(config, direct)
    if args.constraint:
        config.constraints = list(args.constraint)
    if args.lut:
        config.luts = list(args.lut)
    if args.resolutions:
        try:
            config.resolutions = [int(x) for x in args.resolutions.split(":")]
            assert len(config.resolutions) == 3
        except (ValueError, AssertionError):
            raise UserError(f"bad --resolutions '{args.resolutions}'; write MIN:MAX:STEP, e.g. 24:32:4") from None
    config.progress = not args.no_progress
    recipe = {"lr": args.lr, "momentum": args.momentum, "weight_decay": args.weight_decay,
              "label_smoothing": args.label_smoothing, "warmup_epochs": args.warmup_epochs}
    _override(config.recipe, recipe)
    if args.no_nesterov:
        config.recipe.nesterov = False
    sampler = {"name": args.sampler, "pool_size": args.pool_size, "ema": args.ema,
               "map_samples": args.map_samples, "map_cache": args.map_cache}
    _override(config.sampler, sampler)
    if args.p_range:
        config.sampler.p0, config.sampler.p1 = _pair(args.p_range, "--p-range")
    if args.t_range:
        config.sampler.t0, config.sampler.t1 = _pair(args.t_range, "--t-range")
    checkpoint = {"every_minutes": args.checkpoint_minutes, "every_iters": args.checkpoint_iters,
                  "keep": args.keep_checkpoints}
    _override(config.checkpoint, checkpoint)
    if not args.resume:
        if args.preset and not config.data:
            raise UserError(f"preset {args.preset} needs --data (e.g. folder:/data/imagenet or cifar10:DIR)")
        missing = sorted(set(needs_lut) - set(_lut_kinds(config.luts)))
        if missing:
            raise UserError(f"preset {args.preset} trains {', '.join(missing)}: pass --lut FILE for it "
                            "(build one with pssnet lut build)")
    return config


def _lut_kinds(paths: list[str]) -> list[str]:
    if not paths:
        return []
    from ..latency import LatencyTable

    return ["latency_gpu" if LatencyTable.load(p).device == "cuda" else "latency_cpu" for p in paths]


def run_train(args: argparse.Namespace) -> int:
    from ..training import Trainer
    from ..training.distributed import init_distributed, shutdown_distributed

    config = build_config(args)
    ctx = init_distributed(config.device, config.dist_timeout_minutes)
    try:
        out = Trainer(config, ctx).run(resume=args.resume)
    except BaseException as exc:
        if ctx.enabled:  # name the failing rank; torchrun then stops the others and exits non-zero
            print(f"pssnet train: rank {ctx.rank} of {ctx.world_size} failed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
        raise
    finally:
        shutdown_distributed()
    if ctx.is_main:
        print(f"trained {out}: final.pt, metrics.jsonl, tb/ (evaluate with: pssnet eval {out})")
    return 0

