"""Parts of a layout as grids of configurations, and keys as numbers, for vectorised work.

A part (block or classifier) of a subnet depends on the input resolution and one to three
groups' channels. Over many subnets these take a few distinct values each, so a part's
configurations form a small dense grid (resolution x channels of each group). Keys become
``(model key, code)`` pairs, the code packing the input size and the in/mid/out channels, so
measured entries are found for a whole grid with one sorted search.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..layout import Layout
from .features import Number, family_of, part_features
from .keys import CLASSIFIER, Part, layout_parts

_BITS = 16  # bits per packed field: sizes and channels below 65,536


def stride_before(layout: Layout, position: int) -> int:
    """The product of the strides of the blocks before ``position`` (its input's downsampling)."""
    stride = 1
    for block in layout.blocks[:position]:
        stride *= block.stride
    return stride


def model_key(part: Part) -> str:
    """The fitted model a part's latency comes from: its family (kind, kernel, stride, structure)
    at its depth in the network, e.g. ``inverted_residual|k3|st1|c1-relu6,dw3-relu6,c1+id@/8``.
    Blocks of one family at different depths see different map sizes and channel ranges, where
    a device's efficiency differs; blocks of one stage share a model."""
    if part.block is None:
        return f"{CLASSIFIER}|out{part.layout.num_classes}"
    return f"{family_of(part.key(1, [0] * len(part.layout.base_channels)))}@/{stride_before(part.layout, part.position)}"


def pack(size: Number, c_in: Number, c_mid: Number, c_out: Number) -> np.ndarray:
    """One int64 per configuration: input size and in/mid/out channels."""
    fields = [np.asarray(v, dtype=np.int64) for v in (size, c_in, c_mid, c_out)]
    if any(int(f.max(initial=0)) >= 1 << _BITS for f in fields):
        raise ValueError("a size or channel count of 65,536 or more cannot be packed")
    return ((fields[0] << _BITS | fields[1]) << _BITS | fields[2]) << _BITS | fields[3]


def key_code(key: str) -> tuple[str, int]:
    """``(family, code)`` of a table key (see :func:`pack`); the classifier's mid and out are 0."""
    fields = dict((f.rstrip("0123456789"), f[len(f.rstrip("0123456789")):]) for f in key.split("|")[1:])
    numbers = [int(fields.get(name) or 0) for name in ("s", "in", "mid", "out")]
    if key.startswith(CLASSIFIER + "|"):
        numbers[2:] = [0, 0]
    return family_of(key), int(pack(*numbers))


@dataclass
class PartGrid:
    """Every configuration of ``part`` for the given sizes (one per distinct resolution) and
    each group's distinct channel counts: arrays broadcast to ``shape``."""

    part: Part
    sizes: np.ndarray  # [R]: the part's input size at each distinct resolution
    values: Mapping[int, np.ndarray]  # group -> its distinct channel counts

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.sizes),) + tuple(len(self.values[g]) for g in self.part.groups)

    @cached_property
    def size(self) -> np.ndarray:
        return self.sizes.reshape((-1,) + (1,) * len(self.part.groups))

    @cached_property
    def channels(self) -> dict[int, np.ndarray]:
        """Group -> channels, shaped to broadcast over the grid."""
        dims = len(self.part.groups) + 1
        return {g: self.values[g].reshape(tuple(-1 if d == i + 1 else 1 for d in range(dims)))
                for i, g in enumerate(self.part.groups)}

    @cached_property
    def features(self) -> dict[str, Number]:
        return part_features(self.part, self.size, self.channels)

    def codes(self) -> np.ndarray:
        layout, block = self.part.layout, self.part.block
        if block is None:
            shape_in = layout.classifier_in.resolve(self.channels)
            return np.broadcast_to(pack(self.size, shape_in, 0, 0), self.shape)
        c_in, c_mid, c_out = (w.resolve(self.channels) for w in (block.in_width, block.mid_width, block.out_width))
        return np.broadcast_to(pack(self.size, c_in, c_mid, c_out), self.shape)

    def key(self, cell: Sequence[int]) -> str:
        """The table key of one cell."""
        channels = {g: int(self.values[g][i]) for g, i in zip(self.part.groups, cell[1:])}
        return self.part.key(int(self.sizes[cell[0]]), channels)


class MeasuredIndex:
    """Measured entries by family, as sorted codes, for lookups over whole grids."""

    def __init__(self, entries: Mapping[str, float]) -> None:
        by_family: dict[str, list[tuple[int, float]]] = {}
        for key, value in entries.items():
            family, code = key_code(key)
            by_family.setdefault(family, []).append((code, value))
        self._index = {}
        for family, pairs in by_family.items():
            pairs.sort()
            self._index[family] = (np.array([c for c, _ in pairs], dtype=np.int64), np.array([v for _, v in pairs]))

    def lookup(self, family: str, codes: np.ndarray) -> np.ndarray:
        """The measured value of every code, NaN where none was measured."""
        out = np.full(codes.shape, np.nan)
        if family not in self._index:
            return out
        known, values = self._index[family]
        at = np.minimum(np.searchsorted(known, codes), len(known) - 1)
        found = known[at] == codes
        out[found] = values[at[found]]
        return out


def family_of_part(part: Part) -> str:
    """The family of a part's keys (:func:`~pssnet.latency.features.family_of`)."""
    return model_key(part).split("@")[0]


def distinct_configs(layout: Layout, sizes_by_part: Mapping[int, Iterable[int]],
                     values: Sequence[Sequence[int]]) -> int:
    """How many distinct configurations the parts reach, for each part's input sizes and each
    group's channel counts (counted on packed codes: no keys are built)."""
    codes: dict[str, list[np.ndarray]] = {}
    for part in layout_parts(layout):
        grid = PartGrid(part, np.asarray(sorted(set(sizes_by_part[part.position]))),
                        {g: np.asarray(values[g]) for g in part.groups})
        codes.setdefault(family_of_part(part), []).append(grid.codes().ravel())
    return sum(len(np.unique(np.concatenate(c))) for c in codes.values())
