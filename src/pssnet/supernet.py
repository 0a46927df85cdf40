"""Slimmable supernets built from a :class:`~pssnet.layout.Layout`, and static extraction."""

from __future__ import annotations

import copy
import reprlib
from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layout import BlockSpec, ConvSpec
from .ops import ActiveState, SlimBatchNorm2d, SlimConv2d, SlimLinear, activation
from .errors import UserError
from .space import Subnet
from .supernet_config import SupernetConfig


class SubnetTypeError(UserError, TypeError):
    """Something other than a :class:`~pssnet.space.Subnet` where one is needed: still a ``TypeError``."""


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
    # Bilinear with align_corners=True, as the reference resizes to the active resolution.
    if x.shape[-2] == resolution and x.shape[-1] == resolution:
        return x
    return F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=True)


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
    """A slimmable network: ``set_subnet`` picks the active subnet, ``forward`` runs it.

    ``config`` says what to build; ``layout`` and ``space`` are what it describes.
    """

    def __init__(self, config: SupernetConfig) -> None:
        super().__init__()
        layout, space = config.layout(), config.space()
        self.config, self.layout, self.space = config, layout, space
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
        if not isinstance(subnet, Subnet):  # e.g. a key "r24-1.000-...", which would fail obscurely below
            raise SubnetTypeError(f"set_subnet takes a Subnet, got {type(subnet).__name__} "
                                  f"{reprlib.repr(subnet)}; pass Subnet(resolution, widths) or Subnet.from_dict(...) "
                                  "(a bundle's or pool's entries hold Subnets)")
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


def create_supernet(arch: str, *args: Any, **kwargs: Any) -> Supernet:
    """Create a registered supernet by name (see :data:`pssnet.architectures.ARCHITECTURES`).

    The other arguments are :class:`~pssnet.supernet_config.SupernetConfig`'s fields, in its
    order (``num_classes``, ``in_chans``, ``small_input``, ``resolutions``, ``width_range``,
    ``dropout``): ``create_supernet(**model_config)`` rebuilds a stored supernet.
    """
    return Supernet(SupernetConfig(arch, *args, **kwargs))
