"""Slimmable supernets built from a :class:`~pssnet.layout.Layout`, and static extraction."""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import schema
from .architectures import arch_info
from .layout import BlockSpec, ConvSpec, Layout
from .ops import ActiveState, SlimBatchNorm2d, SlimConv2d, SlimLinear, activation
from .space import SearchSpace, Subnet


class ConvBNAct(nn.Module):
    """Convolution, BatchNorm, activation: slimmable until :meth:`to_static` freezes it."""

    def __init__(self, spec: ConvSpec, max_channels: tuple[int, ...], state: ActiveState) -> None:
        super().__init__()
        self.spec = spec
        self.state = state
        max_in, max_out = spec.in_width.resolve(max_channels), spec.out_width.resolve(max_channels)
        self.conv: nn.Module = SlimConv2d(max_in, max_out, spec, state)
        self.bn: nn.Module = SlimBatchNorm2d(max_out, state)
        self.act = activation(spec.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def to_static(self) -> nn.Sequential:
        """Plain ``conv``/``bn``/``act`` layers at the active widths (same state-dict names)."""
        c_in = self.spec.in_width.resolve(self.state.channels)
        c_out = self.spec.out_width.resolve(self.state.channels)
        return nn.Sequential(OrderedDict(
            conv=self.conv.to_static(c_in), bn=self.bn.to_static(c_out), act=copy.deepcopy(self.act),
        ))


class Block(nn.Module):
    """Body convolutions, optional residual (identity or projection), optional max-pool."""

    def __init__(self, spec: BlockSpec, max_channels: tuple[int, ...], state: ActiveState) -> None:
        super().__init__()
        self.body = nn.Sequential(*[ConvBNAct(c, max_channels, state) for c in spec.body])
        self.shortcut: Optional[nn.Module] = (
            ConvBNAct(spec.shortcut, max_channels, state) if spec.shortcut is not None else None
        )
        self.residual = spec.residual
        self.post_act = activation(spec.post_act)
        self.pool: nn.Module = nn.MaxPool2d(3, 2, 1) if spec.max_pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.pool(self.post_act(out))


def _resize(x: torch.Tensor, resolution: int) -> torch.Tensor:
    if x.shape[-2] == resolution and x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)


class StaticSubnet(nn.Module):
    """A standalone subnet: plain ``torch.nn`` layers with sliced weights, fixed resolution."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, resolution: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.resolution = resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(_resize(x, self.resolution))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Supernet(nn.Module):
    """A slimmable network: ``set_subnet`` picks the active subnet, ``forward`` runs it."""

    def __init__(self, layout: Layout, space: SearchSpace) -> None:
        super().__init__()
        if space.num_stages != len(layout.group_names):
            raise ValueError(f"space has {space.num_stages} stages, {layout.name} has {len(layout.group_names)}")
        self.layout, self.space = layout, space
        largest = space.largest()
        max_channels = layout.group_channels(largest.widths)
        self.state = ActiveState(max_channels, largest.resolution, largest)
        self.features = nn.Sequential(*[Block(b, max_channels, self.state) for b in layout.blocks])
        self.classifier = nn.Sequential(
            nn.Dropout(layout.dropout),
            SlimLinear(layout.classifier_in.resolve(max_channels), layout.num_classes),
        )
        self._channels_cache: dict[tuple[float, ...], tuple[int, ...]] = {}

    @property
    def active_subnet(self) -> Subnet:
        """The subnet the supernet runs (kept on the shared :class:`ActiveState`)."""
        return self.state.subnet

    def set_subnet(self, subnet: Subnet) -> None:
        """Activate ``subnet`` (validated against the space). Cheap: no module traversal."""
        channels = self._channels_cache.get(subnet.widths)
        if channels is None:
            self.space.validate(subnet)
            channels = self.layout.group_channels(subnet.widths)
            self._channels_cache[subnet.widths] = channels
        elif subnet.resolution not in self.space.resolutions:
            self.space.validate(subnet)
        self.state.channels = channels
        self.state.resolution = subnet.resolution
        self.state.subnet = subnet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(_resize(x, self.state.resolution))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def extract_subnet(net: Supernet, subnet: Subnet) -> StaticSubnet:
    """A standalone model of ``subnet`` with physically sliced weights and BN statistics.

    Its outputs (eval mode) equal the supernet's for the same subnet. The supernet's active
    subnet is restored afterwards.
    """
    previous = net.active_subnet
    net.set_subnet(subnet)
    try:
        features = copy.deepcopy(net.features)
        for parent in list(features.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, ConvBNAct):
                    setattr(parent, name, child.to_static())
        c_in = net.layout.classifier_in.resolve(net.state.channels)
        dropout, linear = net.classifier
        classifier = nn.Sequential(nn.Dropout(dropout.p), linear.to_static(c_in))
        static = StaticSubnet(features, classifier, subnet.resolution)
    finally:
        net.set_subnet(previous)
    static.train(net.training)
    return static


def create_supernet(
    arch: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool = False,
    resolutions: tuple[int, int, int] | None = None,
    width_range: tuple[float, float] = (0.75, 1.0),
    dropout: float = 0.0,
) -> Supernet:
    """Create a registered supernet by name (see :data:`pssnet.architectures.ARCHITECTURES`).

    ``resolutions`` is ``(min, max, step)``; the default depends on ``small_input``.
    ``dropout`` is the classifier's dropout probability (it replaces the layout's). The default
    0 keeps training forwards deterministic, so a subnet's reused training logits are its score.
    """
    layout, space = layout_and_space(arch, num_classes, in_chans, small_input, resolutions, width_range, dropout)
    net = Supernet(layout, space)
    # Plain data that recreates this supernet (stored in checkpoints and bundles).
    net.config = {
        "arch": arch, "num_classes": layout.num_classes, "in_chans": layout.in_chans,
        "small_input": bool(small_input), "resolutions": [space.min_resolution, space.max_resolution,
                                                          space.resolution_step],
        "width_range": [space.min_width, space.max_width], "dropout": layout.dropout,
    }
    return net


def layout_and_space(
    arch: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    small_input: bool = False,
    resolutions: tuple[int, int, int] | None = None,
    width_range: tuple[float, float] = (0.75, 1.0),
    dropout: float = 0.0,
) -> tuple[Layout, SearchSpace]:
    """The layout and search space :func:`create_supernet` builds, without building the module
    (cheap: e.g. to canonicalise a stored run's subnets from its ``model_config``)."""
    num_classes, in_chans, small_input, resolutions, width_range, dropout = _checked_arguments(
        num_classes, in_chans, small_input, resolutions, width_range, dropout)
    info = arch_info(arch)
    layout = dataclasses.replace(info.layout(num_classes, in_chans, small_input), dropout=dropout)
    lo, hi, step = resolutions or (info.small_resolutions if small_input else info.imagenet_resolutions)
    return layout, SearchSpace(layout.group_names, lo, hi, step, width_range[0], width_range[1])


def _checked_arguments(num_classes, in_chans, small_input, resolutions, width_range, dropout) -> tuple:
    """:func:`create_supernet`'s arguments, type- and range-checked (a :class:`FieldError`
    names the argument), as plain ints, floats and tuples."""
    num_classes = schema.integer(num_classes, "num_classes", low=1)
    in_chans = schema.integer(in_chans, "in_chans", low=1)
    small_input = schema.boolean(small_input, "small_input")
    if resolutions is not None:
        resolutions = tuple(schema.integer(v, f"resolutions[{i}]", low=1)
                            for i, v in enumerate(schema.sequence(resolutions, "resolutions", 3)))
    width_range = tuple(schema.number(v, f"width_range[{i}]", low=0.0, low_open=True)
                        for i, v in enumerate(schema.sequence(width_range, "width_range", 2)))
    dropout = schema.number(dropout, "dropout", 0.0, 1.0, high_open=True)
    return num_classes, in_chans, small_input, resolutions, width_range, dropout
