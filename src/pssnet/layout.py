"""The declarative description of a supernet: channel widths, convolutions, blocks.

Every architecture is expanded once into a :class:`Layout`. The slimmable module, the
resource counter and the latency table's block list all read this one description, so they
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .space import make_divisible, make_divisible_array


@dataclass(frozen=True)
class Width:
    """A channel count: ``make_divisible(base * multiplier) * factor`` of a searchable group,
    or a fixed number of channels (``group is None``: image channels, classes)."""

    group: int | None
    factor: int = 1
    fixed: int = 0

    @staticmethod
    def constant(channels: int) -> "Width":
        return Width(None, 1, channels)

    def resolve(self, group_channels: Sequence):
        """Channels for the given per-group channels (ints, or numpy arrays for many subnets)."""
        if self.group is None:
            return self.fixed
        return group_channels[self.group] * self.factor


@dataclass(frozen=True)
class ConvSpec:
    """One convolution followed by BatchNorm and an optional activation."""

    in_width: Width
    out_width: Width
    kernel: int
    stride: int = 1
    depthwise: bool = False
    act: str | None = "relu"


@dataclass(frozen=True)
class BlockSpec:
    """A block: a body of convolutions, an optional residual path, optional 3x3/2 max-pool."""

    kind: str
    body: tuple[ConvSpec, ...]
    residual: bool = False
    shortcut: ConvSpec | None = None  # projection on the residual path (ResNet downsample)
    post_act: str | None = None  # activation after the residual add
    max_pool: bool = False

    @property
    def in_width(self) -> Width:
        return self.body[0].in_width

    @property
    def out_width(self) -> Width:
        return self.body[-1].out_width

    @property
    def mid_width(self) -> Width:
        """Width of the block's inner tensor (equals the output for single-conv blocks)."""
        return self.body[0].out_width if len(self.body) > 1 else self.body[-1].out_width

    @property
    def kernel(self) -> int:
        return max(c.kernel for c in self.body)

    @property
    def stride(self) -> int:
        stride = 1
        for conv in self.body:
            stride *= conv.stride
        return stride * (2 if self.max_pool else 1)


@dataclass(frozen=True)
class Layout:
    """A fully expanded architecture: searchable groups, blocks, classifier."""

    name: str
    group_names: tuple[str, ...]
    base_channels: tuple[int, ...]
    blocks: tuple[BlockSpec, ...]
    classifier_in: Width
    num_classes: int
    in_chans: int
    dropout: float = 0.0

    def group_channels(self, widths: Sequence[float]) -> tuple[int, ...]:
        """Channels of every searchable group for one subnet's multipliers."""
        if len(widths) != len(self.base_channels):
            raise ValueError(f"{self.name} has {len(self.base_channels)} width multipliers, got {len(widths)}")
        return tuple(make_divisible(base * w) for base, w in zip(self.base_channels, widths))

    def group_channels_array(self, widths: np.ndarray) -> list[np.ndarray]:
        """Vectorised :meth:`group_channels`: multipliers ``[n, groups]`` -> one ``[n]`` array per group."""
        widths = np.asarray(widths, dtype=np.float64)
        if widths.ndim != 2 or widths.shape[1] != len(self.base_channels):
            raise ValueError(f"widths must have shape [n, {len(self.base_channels)}], got {widths.shape}")
        return [make_divisible_array(base * widths[:, g]) for g, base in enumerate(self.base_channels)]

    def channel_choices(self, width_grid: np.ndarray) -> tuple[tuple[int, ...], ...]:
        """The sorted distinct channel counts each group takes over the multipliers ``width_grid``
        (e.g. :meth:`SearchSpace.width_grid`)."""
        grid = np.asarray(width_grid, dtype=np.float64)
        return tuple(tuple(np.unique(make_divisible_array(base * grid)).tolist()) for base in self.base_channels)
