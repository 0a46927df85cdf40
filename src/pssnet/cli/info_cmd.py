"""``pssnet info``: an architecture's search space and the resources of its extreme subnets."""

from __future__ import annotations

import argparse
import json

from ..architectures import ARCHITECTURES
from ..api import count_flops, count_params
from ..supernet import create_supernet
from .args import positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show an architecture's search space and resource range",
                              description="Show the searchable stages of an architecture and the FLOPs and "
                                          "parameters of its smallest and largest subnets.")
    p.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES))
    p.add_argument("--num-classes", type=positive_int, default=1000)
    p.add_argument("--in-chans", type=positive_int, default=3)
    p.add_argument("--small-input", action="store_true", help="stride-1 stem for 28-32 px inputs")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    net = create_supernet(args.arch, args.num_classes, args.in_chans, args.small_input)
    space = net.space
    rows = {"smallest": space.smallest(), "largest": space.largest()}
    choices = net.layout.channel_choices(space.width_grid())
    info = {
        "arch": args.arch,
        "space": space.to_dict(),
        "channel_choices": dict(zip(space.stage_names, choices)),
        **{name: {"subnet": s.to_dict(), "flops_m": count_flops(net, s), "params": count_params(net, s)}
           for name, s in rows.items()},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.arch}: {space.num_stages} width multipliers in [{space.min_width}, {space.max_width}], "
          f"resolutions {space.min_resolution}..{space.max_resolution} step {space.resolution_step}")
    print("stage channel counts:")
    for name, counts in info["channel_choices"].items():
        print(f"  {name:<12} {', '.join(map(str, counts))}")
    for name, s in rows.items():
        print(f"{name:>8}: {count_flops(net, s):9.2f} MFLOPs  {count_params(net, s):>10,d} params  ({s.key})")
    return 0
