"""The measurable configurations of a search space, and the static module of each.

A configuration is one block at fixed channels and input size (or the classifier). Its module
is built directly from the block's :class:`~pssnet.layout.BlockSpec` with plain ``torch.nn``
layers: the same modules, state-dict names and forward as that block of a subnet extracted
with :func:`~pssnet.supernet.extract_subnet`.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..layout import BlockSpec, ConvSpec, Layout, Width
from ..ops import activation
from ..space import SearchSpace
from ..supernet import Block
from ..timing import MeasureSettings
from .grid import distinct_configs
from .keys import Part, block_input_sizes, layout_parts


@dataclass(frozen=True)
class BlockConfig:
    """One distinct measurable configuration: a block at fixed channels and size, or the classifier."""

    key: str
    size: int
    in_channels: int
    block: BlockSpec | None = None  # widths resolved to constants; None for the classifier
    num_classes: int = 0
    dropout: float = 0.0


def _resolved(block: BlockSpec, channels: Mapping[int, int]) -> BlockSpec:
    """``block`` with every width replaced by its constant channel count."""
    def const(width: Width) -> Width:
        return Width.constant(int(width.resolve(channels)))

    def conv(c: ConvSpec) -> ConvSpec:
        return replace(c, in_width=const(c.in_width), out_width=const(c.out_width))

    shortcut = conv(block.shortcut) if block.shortcut is not None else None
    return replace(block, body=tuple(conv(c) for c in block.body), shortcut=shortcut)


def part_config(part: Part, size: int, channels: Mapping[int, int]) -> BlockConfig:
    """The configuration of ``part`` at input ``size`` for per-group ``channels``."""
    key = part.key(size, channels)
    layout = part.layout
    if part.block is None:
        return BlockConfig(key, size, int(layout.classifier_in.resolve(channels)),
                           num_classes=layout.num_classes, dropout=layout.dropout)
    return BlockConfig(key, size, int(part.block.in_width.resolve(channels)), _resolved(part.block, channels))


def enumerate_configs(layout: Layout, space: SearchSpace) -> dict[str, BlockConfig]:
    """Every distinct block and classifier configuration that subnets of ``space`` can contain.

    Groups are sampled independently, so every joint assignment of a part's distinct groups
    is reachable; a block whose in and out widths share a group gets only the tied
    combinations (the product runs over groups, not over in x out).
    """
    values = layout.channel_choices(space.width_grid())
    sizes = [block_input_sizes(layout, r) for r in space.resolutions]
    configs: dict[str, BlockConfig] = {}
    for part in layout_parts(layout):
        part_sizes = sorted({s[part.position] for s in sizes})
        for combo in itertools.product(*(values[g] for g in part.groups)):
            channels = dict(zip(part.groups, combo))
            for size in part_sizes:
                key = part.key(size, channels)
                if key not in configs:
                    configs[key] = part_config(part, size, channels)
    return configs


class PooledClassifier(nn.Module):
    """The tail of a static subnet: global average pool, flatten, dropout, linear."""

    def __init__(self, features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def static_conv(spec: ConvSpec) -> nn.Sequential:
    """``conv``/``bn``/``act`` of a convolution whose widths are constants."""
    c_in, c_out = int(spec.in_width.fixed), int(spec.out_width.fixed)
    conv = nn.Conv2d(c_in, c_out, spec.kernel, spec.stride, spec.kernel // 2,
                     groups=c_in if spec.depthwise else 1, bias=False)
    return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(c_out), act=activation(spec.act)))


class StaticBlock(nn.Module):
    """A block at constant widths in plain ``torch.nn`` layers, laid out as an extracted block."""

    def __init__(self, spec: BlockSpec) -> None:
        super().__init__()
        convs = spec.body + ((spec.shortcut,) if spec.shortcut is not None else ())
        if any(w.group is not None for c in convs for w in (c.in_width, c.out_width)):
            raise ValueError("a static block needs constant widths; resolve the block's channels first")
        self.body = nn.Sequential(*[static_conv(c) for c in spec.body])
        self.shortcut = static_conv(spec.shortcut) if spec.shortcut is not None else None
        self.residual = spec.residual
        self.post_act = activation(spec.post_act)
        self.pool: nn.Module = nn.MaxPool2d(3, 2, 1) if spec.max_pool else nn.Identity()

    # The supernet block's own forward: the same computation by construction, not by copy.
    forward = Block.forward


def build_module(config: BlockConfig) -> nn.Module:
    """A standalone, eval-mode module computing exactly ``config`` with plain ``torch.nn`` layers."""
    if config.block is None:
        module: nn.Module = PooledClassifier(config.in_channels, config.num_classes, config.dropout)
    else:
        module = StaticBlock(config.block)
    return module.eval()


def config_call(config: BlockConfig, settings: MeasureSettings) -> Callable[[], object]:
    """A function running ``config``'s module once on a random input on the settings' device."""
    device = torch.device(settings.device)
    module = build_module(config).to(device)
    x = torch.randn(settings.batch, config.in_channels, config.size, config.size, device=device)
    return lambda: module(x)


def count_configs(layout: Layout, space: SearchSpace) -> int:
    """How many configurations :func:`enumerate_configs` lists, counted without building them
    (ResNet-50's 340,144 in a second instead of half a minute)."""
    values = layout.channel_choices(space.width_grid())
    sizes = [block_input_sizes(layout, r) for r in space.resolutions]
    return distinct_configs(layout, {p.position: {s[p.position] for s in sizes} for p in layout_parts(layout)}, values)
