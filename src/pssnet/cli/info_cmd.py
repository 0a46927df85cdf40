"""``pssnet info``: an architecture's search space and the resources of its extreme subnets."""

from __future__ import annotations

import argparse
import json

from dataclasses import dataclass, field

from ..options import option
from ..api import count_flops, count_params
from ..supernet import create_supernet
from .dataclass_args import add_config_flags, config_from_args
from .supernet_options import SupernetOptions


@dataclass(frozen=True)
class InfoCommand:
    """What ``pssnet info`` was asked for."""

    supernet: SupernetOptions = field(default_factory=SupernetOptions)
    json: bool = option(False, switch=True, help="print JSON instead of text")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("info", help="show an architecture's search space and resource range",
                              description="Show the searchable stages of an architecture and the FLOPs and "
                                          "parameters of its smallest and largest subnets.")
    add_config_flags(p, InfoCommand)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    command: InfoCommand = config_from_args(InfoCommand, args)
    options = command.supernet
    net = create_supernet(options.arch, options.num_classes, options.in_chans, options.small_input)
    space = net.space
    rows = {"smallest": space.smallest(), "largest": space.largest()}
    choices = net.layout.channel_choices(space.width_grid())
    info = {
        "arch": options.arch,
        "space": space.to_dict(),
        "channel_choices": dict(zip(space.stage_names, choices)),
        **{name: {"subnet": s.to_dict(), "flops_m": count_flops(net, s), "params": count_params(net, s)}
           for name, s in rows.items()},
    }
    if command.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{options.arch}: {space.num_stages} width multipliers in [{space.min_width}, {space.max_width}], "
          f"resolutions {space.min_resolution}..{space.max_resolution} step {space.resolution_step}")
    print("stage channel counts:")
    for name, counts in info["channel_choices"].items():
        print(f"  {name:<12} {', '.join(map(str, counts))}")
    for name, s in rows.items():
        print(f"{name:>8}: {count_flops(net, s):9.2f} MFLOPs  {count_params(net, s):>10,d} params  ({s.key})")
    return 0
