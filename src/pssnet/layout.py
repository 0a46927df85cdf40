"""The declarative description of a supernet: channel widths, convolutions, blocks.

Every architecture is expanded once into a :class:`Layout`. The slimmable module, the
resource counter and the latency table's block list all read this one description, so they
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from .space import WIDTH_SCALE, SearchSpace, Subnet, make_divisible, make_divisible_array


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


# -- canonical subnets: one identity per architecture ---------------------------------------------
# Many multipliers round to the same channel counts, so many subnets are one network. The
# canonical form snaps every multiplier to the smallest grid value that gives the same channels;
# two subnets are the same network if and only if their canonical forms are equal.

def canonical_width_table(layout: Layout, width_grid: np.ndarray) -> np.ndarray:
    """``[groups, V]``: for each group and grid index, the smallest grid value with the same channels.

    ``width_grid`` is a contiguous 0.001-step grid (:meth:`SearchSpace.width_grid`). The table
    is computed once per (channels, grid) and shared (read-only).
    """
    grid = np.asarray(width_grid, dtype=np.float64)
    lo, hi = round(float(grid[0]) * WIDTH_SCALE), round(float(grid[-1]) * WIDTH_SCALE)
    if hi - lo + 1 != grid.size:
        raise ValueError("canonical widths need a contiguous 0.001-step width grid (SearchSpace.width_grid())")
    return _table(tuple(layout.base_channels), lo, hi)


@lru_cache(maxsize=64)
def _table(base_channels: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    grid = np.arange(lo, hi + 1) / WIDTH_SCALE
    table = np.empty((len(base_channels), grid.size))
    for g, base in enumerate(base_channels):
        # np.unique's first index of each channel count is its smallest multiplier (grid ascending).
        _, first, inverse = np.unique(make_divisible_array(base * grid), return_index=True, return_inverse=True)
        table[g] = grid[first[inverse.reshape(-1)]]
    table.flags.writeable = False
    return table


def canonical_widths(layout: Layout, width_grid: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Vectorised canonical multipliers: ``widths`` ``[n, groups]`` on ``width_grid`` -> same shape."""
    table = canonical_width_table(layout, width_grid)
    widths = np.asarray(widths, dtype=np.float64)
    index = np.rint((widths - float(width_grid[0])) * WIDTH_SCALE).astype(np.int64)
    if widths.ndim != 2 or widths.shape[1] != table.shape[0]:
        raise ValueError(f"widths must have shape [n, {table.shape[0]}], got {widths.shape}")
    if index.size and (index.min() < 0 or index.max() >= table.shape[1]):
        raise ValueError("widths outside the width grid")
    return table[np.arange(table.shape[0])[None, :], index]


def canonical_subnet(layout: Layout, width_grid: np.ndarray, resolution: int, widths: Sequence[float]) -> Subnet:
    """The canonical form of one subnet given as its resolution and multipliers on ``width_grid``.
    Only the grid's range is checked (the samplers' draws come from the grid itself);
    :func:`canonicalize` validates a subnet against its space first."""
    canonical = canonical_widths(layout, width_grid, np.asarray([widths], dtype=np.float64))[0]
    return Subnet(int(resolution), tuple(canonical.tolist()))


def canonicalize(layout: Layout, subnet: Subnet, space: SearchSpace) -> Subnet:
    """The canonical form of ``subnet``, a member of ``space``: each multiplier snapped to the
    smallest value on the space's width grid that gives the same channels; the resolution is
    unchanged. Same network (channels and resolution) if and only if equal canonical forms;
    FLOPs, parameters and outputs are unchanged. (``pssnet.canonicalize`` takes a supernet.)
    """
    space.validate(subnet)
    return canonical_subnet(layout, space.width_grid(), subnet.resolution, subnet.widths)
