"""``pssnet export``: kept subnets of a bundle as standalone model files, or the bundle as a Hub folder."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..deploy import EXPORT_FORMATS, AdaptiveNet, example_input, export_all, export_checked
from ..options import option
from .budgets import parse_budgets
from .dataclass_args import add_config_flags, config_from_args
from ..errors import UserError
from ..fileio import output_dir, output_file

_SUFFIXES = {".onnx": "onnx", ".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript",
             ".pt2": "exported"}


@dataclass(frozen=True)
class ExportCommand:
    """What ``pssnet export`` was asked for."""

    bundle: str = option(positional=True, metavar="BUNDLE", help="adaptive.pt or adaptive/ (a Hub folder) "
                                                                 "written by pssnet eval")
    budgets: list[str] = option(flag="--budget", repeat=True, metavar="TYPE=N", default_factory=list,
                                help="e.g. flops=20 (MFLOPs), params=1.5 (M), latency_cpu=3 (ms); repeat for several")
    subnet: Optional[str] = option(None, metavar="KEY", help="export this retained subnet (see pssnet adapt --list)")
    all_subnets: bool = option(False, flag="--all", switch=True,
                               help="export every retained subnet into the directory -o, with index.json naming "
                                    "the budgets each serves")
    format: Optional[str] = option(None, choices=EXPORT_FORMATS + ("hub",),
                                   help="default: from the file suffix (.onnx, .ts/.torchscript, .pt2), else pt; "
                                        "hub: the whole bundle as a Hugging Face Hub folder in the directory -o")
    output: str = option("", short="-o", required=True, metavar="PATH",
                         help="the model file to write (a directory with --all or --format hub)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="export the best subnet within a budget as a standalone model, or the bundle as a Hub folder",
        description="Pick the most accurate retained subnet of BUNDLE within every --budget (or --subnet KEY), "
                    "slice its weights into a plain torch.nn model with its stored BN statistics, write it as "
                    "pt (weights-only dict; load with pssnet.deploy.load_static), TorchScript, ONNX (the "
                    "dynamo-based exporter, dynamic batch) or a torch.export program (.pt2, dynamic batch), and "
                    "check the written file's outputs against PyTorch. --all writes every retained subnet; "
                    "--format hub writes the whole bundle as a Hub folder (config.json, model.safetensors, "
                    "README.md model card).")
    add_config_flags(p, ExportCommand)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command: ExportCommand = config_from_args(ExportCommand, args)
    whole = command.all_subnets or command.format == "hub"
    if whole and (command.budgets or command.subnet):
        raise UserError(f"{'--all' if command.all_subnets else '--format hub'} exports every retained subnet; "
                        "drop --budget and --subnet")
    if not whole and bool(command.budgets) == bool(command.subnet):
        raise UserError("give either --budget TYPE=N (repeatable) or --subnet KEY (or --all for every subnet)")
    if command.format == "hub":
        return _export_hub(command)
    if command.all_subnets:
        return _export_all(command)
    output_file(command.output, "-o")
    fmt = command.format or _SUFFIXES.get(Path(command.output).suffix.lower(), "pt")
    adaptive = AdaptiveNet.load(command.bundle)
    retained = adaptive.find(command.subnet) if command.subnet else adaptive.select(**parse_budgets(command.budgets))
    diff = export_checked(adaptive, retained, command.output, fmt, _example(adaptive))
    print(f"exported {retained.describe()}")
    print(f"wrote {command.output} ({fmt}); max |output - PyTorch| on a random input: {diff:.2e}")
    return 0


def _example(adaptive: AdaptiveNet) -> torch.Tensor:
    return example_input(adaptive.info["model_config"], adaptive.info.get("image_size"), batch=2)


def _export_all(command: ExportCommand) -> int:
    out = output_dir(command.output, "-o")
    fmt = command.format or "pt"
    adaptive = AdaptiveNet.load(command.bundle)
    index = export_all(adaptive, out, fmt, _example(adaptive), source=str(command.bundle))
    for entry in index["subnets"]:
        serves = "; ".join(f"{kind} " + ", ".join(f"[{lo:.4g}, {'inf' if hi is None else f'{hi:.4g}'})"
                                                  for lo, hi in spans) for kind, spans in entry["serves"].items())
        print(f"  {entry['file']}: {serves or 'no single budget (kept for ' + ', '.join(entry['labels']) + ')'}; "
              f"max |output - PyTorch| {entry['max_abs_diff_vs_pytorch']:.2e}")
    print(f"wrote {len(index['subnets'])} {fmt} files and {out / 'index.json'}")
    return 0


def _export_hub(command: ExportCommand) -> int:
    out = output_dir(command.output, "-o")
    adaptive = AdaptiveNet.load(command.bundle)
    adaptive.save_pretrained(out)
    copy = AdaptiveNet.load(out)  # read back: every kept subnet must give the same outputs
    example = _example(adaptive)
    worst = 0.0
    with torch.no_grad():
        for retained in adaptive.subnets:
            adaptive.switch_to(retained)
            copy.switch_to(copy.find(retained.key))
            worst = max(worst, (adaptive(example) - copy(example)).abs().max().item())
    names = ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
    print(f"wrote the Hub folder {out} ({names}); {len(adaptive.subnets)} retained subnets read back with "
          f"max |difference| {worst:.1e}")
    print(f"load it with AdaptiveNet.from_pretrained({str(out)!r}); publish it with huggingface_hub's "
          f"upload_folder or AdaptiveNet.push_to_hub")
    return 0
