"""``pssnet export``: one retained subnet of a bundle as a standalone model file."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..deploy import EXPORT_FORMATS, AdaptiveNet, example_input, export_static, run_export
from ..options import option
from .budgets import parse_budgets
from .dataclass_args import add_config_flags, config_from_args
from ..errors import UserError
from ..fileio import output_file

_SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript"}


@dataclass(frozen=True)
class ExportCommand:
    """What ``pssnet export`` was asked for."""

    bundle: str = option(positional=True, metavar="BUNDLE", help="adaptive.pt written by pssnet eval")
    budgets: list[str] = option(flag="--budget", repeat=True, metavar="TYPE=N", default_factory=list,
                                help="e.g. flops=20 (MFLOPs), params=1.5 (M), latency_cpu=3 (ms); repeat for several")
    subnet: Optional[str] = option(None, metavar="KEY", help="export this retained subnet (see pssnet adapt --list)")
    format: Optional[str] = option(None, choices=EXPORT_FORMATS,
                                   help="default: from the file suffix (.onnx, .ts/.torchscript), else pt")
    output: str = option("", short="-o", required=True, metavar="FILE", help="the model file to write")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the best subnet within a budget as a standalone model",
        description="Pick the most accurate retained subnet of BUNDLE within every --budget (or --subnet KEY), "
                    "slice its weights into a plain torch.nn model with its stored BN statistics, write it as "
                    "pt (weights-only dict; load with pssnet.deploy.load_static), TorchScript or ONNX, and check "
                    "the written file's outputs against PyTorch.")
    add_config_flags(p, ExportCommand)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command: ExportCommand = config_from_args(ExportCommand, args)
    if bool(command.budgets) == bool(command.subnet):
        raise UserError("give either --budget TYPE=N (repeatable) or --subnet KEY")
    output_file(command.output, "-o")
    fmt = command.format or _SUFFIXES.get(Path(command.output).suffix.lower(), "pt")
    adaptive = AdaptiveNet.load(command.bundle)
    retained = adaptive.find(command.subnet) if command.subnet else adaptive.select(**parse_budgets(command.budgets))
    static = adaptive.export(retained)
    example = example_input(adaptive.info["model_config"], adaptive.info.get("image_size"), batch=2)
    meta = {"model_config": adaptive.info["model_config"], "subnet": retained.subnet.to_dict(),
            "resources": dict(retained.resources), "test_acc": retained.test_acc}
    export_static(static, command.output, fmt, example, meta)
    with torch.no_grad():
        diff = (run_export(command.output, fmt, example) - static(example)).abs().max().item()
    print(f"exported {retained.describe()}")
    print(f"wrote {command.output} ({fmt}); max |output - PyTorch| on a random input: {diff:.2e}")
    return 0
