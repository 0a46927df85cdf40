"""``pssnet demo``: train, evaluate and deploy a small supernet on the shipped data, end to end."""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..deploy import AdaptiveNet, example_input, export_static, run_export
from ..evaluation import EvalConfig
from ..fileio import output_dir
from ..options import MAX_SEED, option
from ..workflows import evaluate_run_dir
from .adapt_cmd import replay, sample_inputs
from .budgets import parse_trace
from .dataclass_args import add_config_flags, config_from_args

from ..training.config import PRESETS

DEMO_CONSTRAINT = PRESETS["demo"]["constraints"][0]  # the budgets of the `demo` training preset
DEMO_TRACE = """\
# time  budget                    (a device whose compute budget changes while it runs)
0.0     flops=25                  # plugged in: no limit, the most accurate subnet
1.0     flops=17
2.0     flops=11                  # battery saver
3.0     flops=14
4.0     flops=20 params=1.8       # two budgets at once
5.0     flops=25
"""


@dataclass(frozen=True)
class DemoCommand:
    """What ``pssnet demo`` was asked for."""

    out: str = option("runs/demo", help="output directory (default runs/demo)")
    epochs: float = option(1.5, above=0.0, help="training epochs over the 6,000 images (default 1.5)")
    batch_size: int = option(32, min=1, help="training batch size (default 32)")
    threads: int = option(1, min=1,
                          help="torch CPU threads (default 1: robust on a shared machine; 2+ is faster on an idle one)")
    seed: int = option(0, min=0, max=MAX_SEED, help="seed of the training run (default 0)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="train, evaluate and deploy a small supernet on shipped data (a few minutes on a CPU)",
        description="End to end on the shipped Fashion-MNIST subset: train a small-input MobileNetV2 supernet "
                    f"with PSS ({DEMO_CONSTRAINT}), evaluate the subnets each pool retained, print the Pareto "
                    "table, write pareto.png and adaptive.pt, replay a budget trace with live switching and "
                    "export one subnet to ONNX. Re-running reuses a finished training run in --out.")
    add_config_flags(p, DemoCommand)
    p.set_defaults(func=run)


def _train(run_dir: Path, command: DemoCommand) -> None:
    """The `demo` preset, with the demo's own --epochs, --batch-size, --seed and --threads."""
    from ..training import Trainer, TrainConfig, apply_preset

    config = TrainConfig(out=str(run_dir))
    apply_preset(config, "demo")
    config.recipe.lr *= command.batch_size / config.batch_size  # the preset's lr is for its batch size
    config.batch_size = command.batch_size
    config.epochs = max(1, math.ceil(command.epochs))
    config.max_iters = max(1, int(command.epochs * (6000 // command.batch_size)))  # 6,000 shipped images
    config.seed = command.seed
    config.threads = command.threads
    Trainer(config).run()


def run(args: argparse.Namespace) -> int:
    command: DemoCommand = config_from_args(DemoCommand, args)
    torch.set_num_threads(command.threads)
    out = output_dir(command.out, "--out")
    run_dir = out / "mobilenet_v2-pss"
    start = time.perf_counter()
    print(f"pssnet demo: MobileNetV2 supernet (small input), PSS on fashion-mnist-mini, budgets {DEMO_CONSTRAINT}")

    print("\n[1/4] training")
    if (run_dir / "final.pt").is_file():
        print(f"  reusing the finished run in {run_dir} (delete {out} to train again)")
    else:
        t0 = time.perf_counter()
        _train(run_dir, command)
        print(f"  trained {command.epochs:g} epochs in {time.perf_counter() - t0:.0f} s -> {run_dir}")

    print("\n[2/4] evaluation: BN recalibration, held-out selection among each pool's top 3, test accuracy")
    t0 = time.perf_counter()
    config = EvalConfig(top_k=3, calib_batches=8, holdout=500, batch_size=64)
    _, paths = evaluate_run_dir(run_dir, config, out_dir=out)
    print(_table_only(paths["md"].read_text()))
    written = ", ".join(str(paths[name]) for name in ("png", "csv", "bundle") if name in paths)  # png: with matplotlib
    print(f"  evaluated in {time.perf_counter() - t0:.0f} s; wrote {written}")

    print("\n[3/4] live switching: replaying a budget trace (stored BN statistics, no recalibration)")
    adaptive = AdaptiveNet.load(paths["bundle"])
    inputs, labels, what = sample_inputs(adaptive, 64)
    print(f"  inference on {what}")
    replay(adaptive, parse_trace(DEMO_TRACE, "demo trace"), inputs, labels)

    print("\n[4/4] export: the best subnet within flops=15 as ONNX, checked in onnxruntime")
    chosen = adaptive.select(flops=15)
    static = adaptive.export(chosen)
    example = example_input(adaptive.info["model_config"], adaptive.info.get("image_size"), 4)
    onnx_path = out / "subnet_flops15.onnx"
    export_static(static, onnx_path, "onnx", example, {})
    with torch.no_grad():
        diff = (run_export(onnx_path, "onnx", example) - static(example)).abs().max().item()
    print(f"  {chosen.key}: {chosen.resources['flops']:.2f} MFLOPs -> {onnx_path} (max |onnx - torch| {diff:.1e})")

    print(f"\ndone in {time.perf_counter() - start:.0f} s. Next: pssnet adapt {paths['bundle']} --trace FILE, "
          f"pssnet export {paths['bundle']} --budget flops=18 -o model.onnx")
    return 0


def _table_only(markdown: str) -> str:
    """The Pareto table rows of pareto.md (without its heading and notes)."""
    return "\n".join(line for line in markdown.splitlines() if line.startswith("|"))
