"""``pssnet lut``: build a latency look-up table on this device, or show one."""

from __future__ import annotations

import argparse
import collections
import json
import time

from ..architectures import ARCHITECTURES
from ..fileio import output_file
from ..latency import LatencyTable, build_table, enumerate_configs
from ..timing import STATISTICS, MeasureSettings
from ..supernet import create_supernet
from .args import non_negative_int, positive_int


def _triple(text: str) -> tuple[int, int, int]:
    try:
        lo, hi, step = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:MAX:STEP (integers), got '{text}'") from None
    return lo, hi, step


def _pair(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH (numbers), got '{text}'") from None
    return lo, hi


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lut", help="build or show a per-block latency look-up table",
                              description="Latency look-up tables: every distinct block of a search space "
                                          "timed on this device, for latency_cpu / latency_gpu constraints.")
    commands = p.add_subparsers(dest="lut_command", metavar="ACTION", required=True)

    b = commands.add_parser("build", help="measure every block configuration of a search space",
                            description="Enumerate every distinct block configuration (kind, input size, "
                                        "in/out/mid channels, kernel, stride) the search space can produce "
                                        "and time each on this device. Resumes when -o exists and matches.")
    b.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    b.add_argument("--small-input", action="store_true", help="stride-1 stem for 28-32 px inputs")
    b.add_argument("--num-classes", type=positive_int, default=1000)
    b.add_argument("--in-chans", type=positive_int, default=3)
    b.add_argument("--resolutions", type=_triple, metavar="MIN:MAX:STEP",
                   help="resolution range of the space (default: the architecture's)")
    b.add_argument("--width-range", type=_pair, default=(0.75, 1.0), metavar="LOW:HIGH",
                   help="width multiplier range of the space (default 0.75:1.0)")
    b.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to measure (default cpu)")
    b.add_argument("--threads", type=positive_int, help="CPU threads while measuring (default: torch's current count)")
    b.add_argument("--batch", type=positive_int, default=1, help="batch size of the timed inputs (default 1)")
    b.add_argument("--warmup", type=non_negative_int, default=2, help="untimed calls per round (default 2)")
    b.add_argument("--repeats", type=positive_int, default=5, help="timed calls per round (default 5)")
    b.add_argument("--rounds", type=positive_int, default=5, help="rounds, spread over time, per entry (default 5)")
    b.add_argument("--statistic", choices=STATISTICS, default="median",
                   help="summary of an entry's samples: median (default), or min on a machine shared "
                        "with other load")
    b.add_argument("-o", "--output", required=True, help="table file (JSON); resumed if it exists")
    b.add_argument("--force", action="store_true", help="start over even if the output exists")
    b.add_argument("--dry-run", action="store_true", help="only count the entries to measure")
    b.set_defaults(func=run_build)

    s = commands.add_parser("show", help="summarise a table file",
                            description="Print a table's device, settings, and entry counts per block kind.")
    s.add_argument("file")
    s.add_argument("--json", action="store_true", help="print the header as JSON (without entries)")
    s.set_defaults(func=run_show)


def run_build(args: argparse.Namespace) -> int:
    if not args.dry_run:
        output_file(args.output, "-o")
    settings = MeasureSettings(device=args.device, threads=args.threads, batch=args.batch, warmup=args.warmup,
                               repeats=args.repeats, rounds=args.rounds, statistic=args.statistic)
    net = create_supernet(args.arch, args.num_classes, args.in_chans, args.small_input,
                          args.resolutions, args.width_range)
    count = len(enumerate_configs(net.layout, net.space))
    print(f"{args.arch}: {count} distinct block configurations "
          f"(resolutions {net.space.min_resolution}..{net.space.max_resolution}, "
          f"widths {net.space.min_width}..{net.space.max_width}) on {args.device}")
    if count > 20_000:
        print(f"warning: {count} entries take long to measure; a narrower --resolutions or --width-range "
              "shrinks the table")
    if args.dry_run:
        return 0
    t0 = time.perf_counter()
    table = build_table(net, settings, args.output, force=args.force)
    seconds = time.perf_counter() - t0
    largest, smallest = net.space.largest(), net.space.smallest()
    print(f"wrote {args.output}: {len(table)} entries in {seconds:.1f} s "
          f"({table.device_info.get('cpu') if args.device == 'cpu' else table.device_info.get('cuda')}, "
          f"{table.device_info['threads']} threads, batch {table.batch}); overhead {table.overhead_ms:.3f} ms")
    print(f"predicted latency: smallest {table.predict(net.layout, smallest):.3f} ms, "
          f"largest {table.predict(net.layout, largest):.3f} ms")
    return 0


def run_show(args: argparse.Namespace) -> int:
    table = LatencyTable.load(args.file)
    header = {k: v for k, v in table.to_dict().items() if k != "entries"}
    if args.json:
        print(json.dumps({**header, "num_entries": len(table)}, indent=2))
        return 0
    kinds = collections.Counter(key.split("|", 1)[0] for key in table.entries)
    info = table.device_info
    print(f"{args.file}: {len(table)} entries{'' if table.complete else ' (incomplete: resume the build)'}")
    print(f"device: {info.get('type')} {info.get('cuda') or info.get('cpu')}, {info.get('threads')} threads, "
          f"torch {info.get('torch')}, batch {table.batch}")
    cfg = table.model_config
    print(f"space: {cfg.get('arch')} small_input={cfg.get('small_input')} classes={cfg.get('num_classes')} "
          f"in_chans={cfg.get('in_chans')} resolutions={cfg.get('resolutions')} widths={cfg.get('width_range')}")
    print(f"settings: {table.settings}; overhead {table.overhead_ms:.3f} ms")
    for kind, n in sorted(kinds.items()):
        values = [v for k, v in table.entries.items() if k.startswith(kind + "|")]
        print(f"  {kind:<18} {n:>6} entries  {min(values):8.3f} .. {max(values):8.3f} ms")
    return 0
