"""Slimmable layers: full-size weights, sliced at run time to the active subnet's channels.

A layer reads its input channel count from the tensor it receives, so only convolutions need
to know their output width: they look it up in the supernet's :class:`ActiveState`, an object
shared by reference. Switching subnets therefore updates one attribute, never the module tree.
Each slimmable layer converts to the standard ``torch.nn`` layer with physically sliced
weights (:meth:`to_static`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .layout import ConvSpec, Width
from .space import Subnet


class ActiveState:
    """What the supernet currently runs: the subnet, its per-group channels and resolution, and
    the stored-BN slot."""

    __slots__ = ("subnet", "channels", "resolution", "bn_slot")

    def __init__(self, channels: tuple[int, ...], resolution: int, subnet: Optional[Subnet] = None) -> None:
        self.subnet = subnet
        self.channels = channels
        self.resolution = resolution
        # Index into each BatchNorm's bank of stored statistics (deployment); None = running stats.
        self.bn_slot: Optional[int] = None


class SlimConv2d(nn.Conv2d):
    """Conv2d (no bias, 'same' padding) whose weight is sliced to the active channels.

    Built at its maximal widths (a depthwise one with ``groups = in_channels``), so it is an
    ordinary ``nn.Conv2d`` to code that inspects modules (weight decay, state dicts).
    """

    def __init__(self, max_in: int, max_out: int, spec: ConvSpec, state: ActiveState) -> None:
        super().__init__(max_in, max_out, spec.kernel, spec.stride, spec.kernel // 2,
                         groups=max_in if spec.depthwise else 1, bias=False)
        self.depthwise = spec.depthwise
        self.out_width: Width = spec.out_width
        self.state = state

    def reset_parameters(self) -> None:
        nn.init.kaiming_normal_(self.weight, mode="fan_out")

    def active_weight(self, in_channels: int) -> torch.Tensor:
        if self.depthwise:
            out_channels = in_channels
        else:
            out_channels = self.out_width.resolve(self.state.channels)
        w = self.weight
        if out_channels != w.shape[0]:
            w = w[:out_channels]
        if not self.depthwise and in_channels != w.shape[1]:
            w = w[:, :in_channels]
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c_in = x.shape[1]
        groups = c_in if self.depthwise else 1
        return F.conv2d(x, self.active_weight(c_in), None, self.stride, self.padding, self.dilation, groups)

    def to_static(self, in_channels: int) -> nn.Conv2d:
        w = self.active_weight(in_channels).detach()
        out_channels = w.shape[0]
        conv = nn.Conv2d(in_channels, out_channels, self.kernel_size, self.stride, self.padding,
                         groups=in_channels if self.depthwise else 1, bias=False)
        conv.weight.data.copy_(w)
        return conv


class SlimBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first C channels; optionally serves stored per-subnet statistics."""

    def __init__(self, max_channels: int, state: ActiveState) -> None:
        super().__init__(max_channels)
        self.state = state
        # Stored per-subnet statistics (deployment). Buffers, so that .to()/.half() move them;
        # not persistent, so that state dicts and checkpoints stay the same with or without them.
        self.bank_mean: Optional[torch.Tensor]
        self.bank_var: Optional[torch.Tensor]
        self.register_buffer("bank_mean", None, persistent=False)
        self.register_buffer("bank_var", None, persistent=False)

    def set_stat_bank(self, means: torch.Tensor, variances: torch.Tensor) -> None:
        """Stored statistics ``[slots, max_channels]``, selected by ``state.bn_slot`` in eval."""
        self.bank_mean, self.bank_var = means, variances

    def _stats(self, c: int) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        slot = self.state.bn_slot
        if slot is not None and not self.training and self.bank_mean is not None:
            return self.bank_mean[slot, :c], self.bank_var[slot, :c]
        if self.running_mean is None:
            return None, None
        return self.running_mean[:c], self.running_var[:c]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average (BN recalibration)
                factor = 1.0 / float(self.num_batches_tracked)
        mean, var = self._stats(c)
        use_batch_stats = self.training or mean is None
        return F.batch_norm(x, mean, var, self.weight[:c], self.bias[:c], use_batch_stats, factor, self.eps)

    def to_static(self, channels: int) -> nn.BatchNorm2d:
        bn = nn.BatchNorm2d(channels, eps=self.eps, momentum=0.1 if self.momentum is None else self.momentum)
        mean, var = self._stats(channels)
        with torch.no_grad():
            bn.weight.copy_(self.weight[:channels])
            bn.bias.copy_(self.bias[:channels])
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class SlimLinear(nn.Linear):
    """Linear layer whose input features are sliced to the active channels."""

    def reset_parameters(self) -> None:
        # The reference's classifier initialisation: weights N(0, 0.01), bias 0.
        nn.init.normal_(self.weight, 0.0, 0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        w = self.weight if c == self.in_features else self.weight[:, :c]
        return F.linear(x, w, self.bias)

    def to_static(self, in_features: int) -> nn.Linear:
        linear = nn.Linear(in_features, self.out_features)
        with torch.no_grad():
            linear.weight.copy_(self.weight[:, :in_features])
            linear.bias.copy_(self.bias)
        return linear


def activation(name: str | None) -> nn.Module:
    if name is None:
        return nn.Identity()
    return {"relu": nn.ReLU, "relu6": nn.ReLU6}[name](inplace=True)

