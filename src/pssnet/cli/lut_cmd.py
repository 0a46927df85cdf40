"""``pssnet lut``: build a latency look-up table on this device, or show one."""

from __future__ import annotations

import argparse
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Optional

from ..fileio import output_file
from ..latency import FitSettings, LatencyTable, build_table, count_configs
from ..options import option
from ..timing import MeasureSettings
from ..supernet import create_supernet
from .dataclass_args import add_config_flags, config_from_args
from .supernet_options import SupernetOptions


@dataclass(frozen=True)
class LutBuildCommand:
    """What ``pssnet lut build`` was asked for: the search space, how to measure, and where to write."""

    supernet: SupernetOptions = field(default_factory=SupernetOptions)
    # The space's own bounds are the supernet's (create_supernet names a bad value).
    resolutions: Optional[list[int]] = option(None, metavar="MIN:MAX:STEP", example="24:32:4",
                                              help="resolution range of the space (default: the architecture's)")
    width_range: list[float] = option(metavar="LOW:HIGH", example="0.75:1.0", default_factory=lambda: [0.75, 1.0],
                                      help="width multiplier range of the space (default 0.75:1.0)")
    measure: MeasureSettings = field(default_factory=MeasureSettings)
    plan: FitSettings = field(default_factory=FitSettings)
    output: str = option("", short="-o", required=True, help="table file (JSON); resumed if it exists")
    force: bool = option(False, switch=True, help="start over even if the output exists")
    dry_run: bool = option(False, switch=True, help="only count the entries to measure")


@dataclass(frozen=True)
class LutShowCommand:
    """What ``pssnet lut show`` was asked for."""

    file: str = option(positional=True, metavar="FILE", help="table file (JSON)")
    json: bool = option(False, switch=True, help="print the header as JSON (without entries)")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lut", help="build or show a per-block latency look-up table",
                              description="Latency look-up tables: every distinct block of a search space "
                                          "timed on this device, for latency_cpu / latency_gpu constraints.")
    commands = p.add_subparsers(dest="lut_command", metavar="ACTION", required=True)

    b = commands.add_parser("build", help="measure a search space's blocks on this device",
                            description="Count the distinct block configurations (kind, input size, "
                                        "in/out/mid channels, kernel, stride) the search space can produce; "
                                        "time each alone (--exhaustive), or time whole subnets block by block "
                                        "and fit a model per block kind for the rest (--fit, the default for "
                                        "large spaces). Both correct the sum over blocks on whole subnets timed "
                                        "end to end. Resumes when -o exists and matches.")
    add_config_flags(b, LutBuildCommand)
    b.set_defaults(func=run_build)

    s = commands.add_parser("show", help="summarise a table file",
                            description="Print a table's device, settings, and entry counts per block kind.")
    add_config_flags(s, LutShowCommand)
    s.set_defaults(func=run_show)


def run_build(args: argparse.Namespace) -> int:
    command: LutBuildCommand = config_from_args(LutBuildCommand, args)
    if not command.dry_run:
        output_file(command.output, "-o")
    options, settings = command.supernet, command.measure
    resolutions = tuple(command.resolutions) if command.resolutions else None
    net = create_supernet(options.arch, options.num_classes, options.in_chans, options.small_input,
                          resolutions, tuple(command.width_range))
    count = count_configs(net.layout, net.space)
    method = command.plan.method(count)
    print(f"{options.arch}: {count} distinct block configurations "
          f"(resolutions {net.space.min_resolution}..{net.space.max_resolution}, "
          f"widths {net.space.min_width}..{net.space.max_width}) on {settings.device}: {method} build"
          + (f", budget {command.plan.budget_minutes:g} min" if method == "fitted" else ""))
    if method == "exhaustive" and count > 20_000:
        print(f"warning: {count} entries take long to measure; --fit measures a sample and fits the rest")
    if command.dry_run:
        return 0
    t0 = time.perf_counter()
    table = build_table(net, settings, command.output, force=command.force, plan=command.plan)
    seconds = time.perf_counter() - t0
    largest, smallest = net.space.largest(), net.space.smallest()
    device = table.device_info.get("cpu") if settings.device == "cpu" else table.device_info.get("cuda")
    print(f"wrote {command.output}: {len(table)} of {count} entries measured, {len(table.timings)} whole subnets "
          f"timed, in {seconds:.1f} s ({device}, {table.device_info['threads']} threads, batch {table.batch})")
    print(_correction_line(table))
    print(f"predicted latency: smallest {table.predict(net.layout, smallest):.3f} ms, "
          f"largest {table.predict(net.layout, largest):.3f} ms")
    return 0


def _correction_line(table: LatencyTable) -> str:
    c = table.correction
    text = f"end to end: {c.form} correction (overhead {table.overhead_ms:.3f} ms, scale {c.scale:.3f}"
    if c.uses_memory:
        text += f", {c.weight_ms_per_mb:.3f} ms per MB of weights, {c.act_ms_per_mb:.3f} per MB of activations"
    text += f") fitted on {c.subnets} whole subnets"
    if c.heldout:
        text += (f"; held-out error {c.heldout['mape']:.2f} %, {c.heldout['within_10pct']:.0%} of subnets "
                 "within +-10 %")
    return text


def run_show(args: argparse.Namespace) -> int:
    command: LutShowCommand = config_from_args(LutShowCommand, args)
    table = LatencyTable.load(command.file)
    header = {k: v for k, v in table.to_dict().items() if k not in ("entries", "subnets")}
    if command.json:
        print(json.dumps({**header, "num_entries": len(table), "num_subnets": len(table.timings)}, indent=2))
        return 0
    info, cfg = table.device_info, table.model_config
    space = table.build.get("space_entries")
    measured = f"{len(table)} of {space} entries measured" if space else f"{len(table)} entries"
    print(f"{command.file}: {table.method} table, {measured}"
          f"{'' if table.complete else ' (incomplete: resume the build)'}")
    print(f"device: {info.get('type')} {info.get('cuda') or info.get('cpu')}, {info.get('threads')} threads, "
          f"torch {info.get('torch')}, batch {table.batch}")
    print(f"space: {cfg.get('arch')} small_input={cfg.get('small_input')} classes={cfg.get('num_classes')} "
          f"in_chans={cfg.get('in_chans')} resolutions={cfg.get('resolutions')} widths={cfg.get('width_range')}")
    print(f"settings: {table.settings}" + (f"; built in {table.build['seconds']:.0f} s" if "seconds" in table.build else ""))
    print(_correction_line(table))
    kinds = collections.Counter(key.split("|", 1)[0] for key in table.entries)
    for kind, n in sorted(kinds.items()):
        values = [v for k, v in table.entries.items() if k.startswith(kind + "|")]
        print(f"  {kind:<18} {n:>6} measured  {min(values):8.3f} .. {max(values):8.3f} ms")
    if table.models:
        print("block models (the rest is predicted; held-out error over whole subnets):")
        for key, model in sorted(table.models.items()):
            print(f"  {key:<60} {model.form:<9} {model.samples:>5} samples  held-out {model.heldout_mape:5.2f} %")
    for r in table.build.get("rounds", []):
        print(f"  after {r['subnets']:>4} subnets ({r['seconds']:.0f} s): block error {r['block_mape']:.2f} %, "
              f"end to end {r['e2e_mape']:.2f} %")
    return 0
