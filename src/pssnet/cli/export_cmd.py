"""``pssnet export``: one retained subnet of a bundle as a standalone model file."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..deploy import EXPORT_FORMATS, AdaptiveNet, example_input, export_static, run_export
from .budgets import parse_budgets
from ..errors import UserError
from ..fileio import output_file

_SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the best subnet within a budget as a standalone model",
        description="Pick the most accurate retained subnet of BUNDLE within every --budget (or --subnet KEY), "
                    "slice its weights into a plain torch.nn model with its stored BN statistics, write it as "
                    "pt (weights-only dict; load with pssnet.deploy.load_static), TorchScript or ONNX, and check "
                    "the written file's outputs against PyTorch.")
    p.add_argument("bundle", metavar="BUNDLE", help="adaptive.pt written by pssnet eval")
    p.add_argument("--budget", action="append", default=[], metavar="TYPE=N",
                   help="e.g. flops=20 (MFLOPs), params=1.5 (M), latency_cpu=3 (ms); repeat for several")
    p.add_argument("--subnet", metavar="KEY", help="export this retained subnet (see pssnet adapt --list)")
    p.add_argument("--format", choices=EXPORT_FORMATS,
                   help="default: from the file suffix (.onnx, .ts/.torchscript), else pt")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if bool(args.budget) == bool(args.subnet):
        raise UserError("give either --budget TYPE=N (repeatable) or --subnet KEY")
    output_file(args.output, "-o")
    fmt = args.format or _SUFFIXES.get(Path(args.output).suffix.lower(), "pt")
    adaptive = AdaptiveNet.load(args.bundle)
    retained = adaptive.find(args.subnet) if args.subnet else adaptive.select(**parse_budgets(args.budget))
    static = adaptive.export(retained)
    example = example_input(adaptive.info["model_config"], adaptive.info.get("image_size"), batch=2)
    meta = {"model_config": adaptive.info["model_config"], "subnet": retained.subnet.to_dict(),
            "resources": dict(retained.resources), "test_acc": retained.test_acc}
    export_static(static, args.output, fmt, example, meta)
    with torch.no_grad():
        diff = (run_export(args.output, fmt, example) - static(example)).abs().max().item()
    print(f"exported {retained.describe()}")
    print(f"wrote {args.output} ({fmt}); max |output - PyTorch| on a random input: {diff:.2e}")
    return 0
