"""``pssnet adapt``: replay a budget trace, switching the deployed subnet at each change."""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..deploy import AdaptiveNet, example_input
from ..options import option
from .budgets import TraceEvent, parse_trace
from .dataclass_args import add_config_flags, config_from_args
from ..errors import UserError


@dataclass(frozen=True)
class AdaptCommand:
    """What ``pssnet adapt`` was asked for."""

    bundle: str = option(positional=True, metavar="BUNDLE",
                         help="adaptive.pt or adaptive/ (a Hub folder) written by pssnet eval")
    trace: Optional[str] = option(None, metavar="FILE", help="budget trace file (required unless --list)")
    batch: int = option(32, min=1, help="images per inference (default 32)")
    realtime: bool = option(False, switch=True, help="wait until each time stamp instead of replaying at once")
    threads: Optional[int] = option(None, min=1, help="torch CPU threads for inference (default: torch's)")
    list_only: bool = option(False, flag="--list", switch=True, help="list the retained subnets and exit")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "adapt", help="replay a budget trace with live subnet switching",
        description="Replay a trace of budgets (lines 'TIMESTAMP TYPE=N [TYPE=N ...]', e.g. '0.0 flops=20'; "
                    "'#' starts a comment). At each change, switch BUNDLE to the best retained subnet within the "
                    "budget (stored BN statistics, no recalibration) and run inference on a batch of test images "
                    "(random inputs if the bundle's data set is not available).")
    add_config_flags(p, AdaptCommand)
    p.set_defaults(func=run)


def sample_inputs(adaptive: AdaptiveNet, batch: int) -> tuple[torch.Tensor, Optional[torch.Tensor], str]:
    """A batch of the bundle's test images (with labels), else random inputs."""
    spec = adaptive.info.get("data")
    if spec:
        try:
            from ..data import load_data

            images, labels = zip(*(load_data(spec, adaptive.info.get("image_size")).test[i] for i in range(batch)))
            return torch.stack(images), torch.as_tensor(labels), f"{batch} test images of {spec}"
        except (UserError, OSError, IndexError):
            pass
    return example_input(adaptive.info["model_config"], adaptive.info.get("image_size"), batch), None, \
        f"{batch} random inputs ({spec or 'no data set'} not available)"


def replay(adaptive: AdaptiveNet, events: Sequence[TraceEvent], inputs: torch.Tensor,
           labels: Optional[torch.Tensor] = None, realtime: bool = False, repeats: int = 3) -> list[dict]:
    """Switch at every budget change and time it; print and return one row per change."""
    rows, previous, start = [], None, time.perf_counter()
    print(f"{'time':>6}  {'budget':<22} {'subnet (resolution, widths)':<52} {'MFLOPs':>7} {'test acc':>8} "
          f"{'switch':>9} {'infer':>9}" + ("  batch acc" if labels is not None else ""))
    for event in events:
        if dict(event.budgets) == previous:
            continue
        previous = dict(event.budgets)
        if realtime:
            time.sleep(max(0.0, start + event.time - time.perf_counter()))
        t0 = time.perf_counter_ns()
        chosen = adaptive.fit_budget(**event.budgets)
        switch_us = (time.perf_counter_ns() - t0) / 1e3
        times = []
        with torch.no_grad():
            for _ in range(repeats):
                t1 = time.perf_counter()
                logits = adaptive(inputs)
                times.append(time.perf_counter() - t1)
        row = {"time": event.time, "budget": dict(event.budgets), "subnet": chosen.key,
               "test_acc": chosen.test_acc, "switch_us": switch_us, "infer_ms": 1e3 * statistics.median(times)}
        budget = " ".join(f"{k}={v:g}" for k, v in event.budgets.items())
        acc = "" if chosen.test_acc is None else f"{chosen.test_acc:.2f}%"
        line = (f"{event.time:6.2f}  {budget:<22} {chosen.key:<52} {chosen.resources.get('flops', 0.0):7.2f} "
                f"{acc:>8} {switch_us:7.1f}us {row['infer_ms']:7.2f}ms")
        if labels is not None:
            row["batch_acc"] = 100.0 * float((logits.argmax(1) == labels).float().mean())
            line += f"  {row['batch_acc']:6.1f}%"
        print(line)
        rows.append(row)
    return rows


def list_subnets(adaptive: AdaptiveNet) -> None:
    print(f"{len(adaptive.subnets)} retained subnets; budget types: {', '.join(adaptive.kinds)}")
    for r in sorted(adaptive.subnets, key=lambda r: r.resources.get("flops", 0.0)):
        print("  " + r.describe())


def run(args: argparse.Namespace) -> int:
    command: AdaptCommand = config_from_args(AdaptCommand, args)
    if command.threads:
        torch.set_num_threads(command.threads)
    adaptive = AdaptiveNet.load(command.bundle)
    if command.list_only:
        list_subnets(adaptive)
        return 0
    if not command.trace:
        raise UserError("give the budget trace with --trace FILE (lines like '0.0 flops=20')")
    path = Path(command.trace)
    if not path.is_file():
        raise UserError(f"trace file '{path}' does not exist; write one line per budget, e.g. '0.0 flops=20'")
    events = parse_trace(path.read_text(), source=str(path))
    inputs, labels, what = sample_inputs(adaptive, command.batch)
    print(f"replaying {len(events)} trace lines on {what}")
    replay(adaptive, events, inputs, labels, realtime=command.realtime)
    return 0
