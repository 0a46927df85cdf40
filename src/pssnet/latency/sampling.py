"""Which whole subnets a fitted build times: a stratified first sample, then targeted ones.

Every subnet holds every block of the network, so timing a subnet block by block measures one
configuration of every block kind at once, in its real context. The first sample is
stratified: the smallest and the largest subnet, then every resolution in turn (every input
size of every block) with each multiplier from its own Latin-hypercube column (every group's
channels spread evenly over their range). Later samples go where the fitted models' held-out
error is largest (:func:`targeted_subnets`), as nn-Meter's adaptive sampling does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..space import WIDTH_SCALE, SearchSpace, Subnet

PER_RESOLUTION = 4  # subnets per resolution in the first sample
FIRST_SAMPLE = (24, 80)  # its smallest and largest size


def first_sample_size(space: SearchSpace) -> int:
    """Subnets in the stratified first sample: a few per resolution, within :data:`FIRST_SAMPLE`."""
    return int(np.clip(PER_RESOLUTION * len(space.resolutions) + 2, *FIRST_SAMPLE))


def _latin_widths(space: SearchSpace, count: int, rng: np.random.Generator) -> np.ndarray:
    """``[count, stages]`` multipliers, each column a Latin-hypercube sample of the width grid."""
    grid = space.width_grid()
    strata = (rng.permuted(np.tile(np.arange(count), (space.num_stages, 1)), axis=1).T + rng.random(
        (count, space.num_stages))) / count
    return grid[np.minimum((strata * len(grid)).astype(np.int64), len(grid) - 1)]


def stratified_subnets(space: SearchSpace, count: int, seed: int = 0) -> list[Subnet]:
    """``count`` distinct subnets (fewer if the space holds fewer) covering ``space`` evenly."""
    rng = np.random.default_rng(seed)
    chosen = [space.smallest(), space.largest()]
    rest = max(count - 2, 1)
    res = np.resize(np.asarray(space.resolutions), rest)
    rng.shuffle(res)
    for r, w in zip(res, _latin_widths(space, rest, rng)):
        s = Subnet(int(r), tuple(float(v) for v in w))
        if s not in chosen:
            chosen.append(s)
    return chosen[:count]


def _jittered(space: SearchSpace, value: float, rng: np.random.Generator) -> float:
    """``value`` moved by up to a tenth of the width range, kept inside it."""
    lo, hi = round(space.min_width * WIDTH_SCALE), round(space.max_width * WIDTH_SCALE)
    step = max(1, (hi - lo) // 10)
    return int(np.clip(round(value * WIDTH_SCALE) + rng.integers(-step, step + 1), lo, hi)) / WIDTH_SCALE


def targeted_subnets(space: SearchSpace, anchors: Sequence[tuple[Subnet, Sequence[int]]],
                     weights: Sequence[float], count: int, seed: int, exclude: set[Subnet]) -> list[Subnet]:
    """``count`` new subnets near badly predicted blocks.

    An anchor is a measured subnet and the stages whose widths set one of its blocks; anchors are
    drawn in proportion to ``weights`` (the block's held-out error times its share of the latency).
    Each new subnet keeps the anchor's resolution (or a neighbour) and the anchor's multipliers
    of those stages, slightly moved; its other multipliers are drawn afresh.
    """
    rng = np.random.default_rng(seed)
    p = np.asarray(weights, dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full(len(p), 1 / len(p))
    res = list(space.resolutions)
    chosen: list[Subnet] = []
    for _ in range(50 * count):
        if len(chosen) >= count:
            break
        anchor, stages = anchors[int(rng.choice(len(anchors), p=p))]
        at = res.index(anchor.resolution) + int(rng.integers(-1, 2))
        widths = list(_latin_widths(space, 1, rng)[0])
        for g in stages:
            widths[g] = _jittered(space, anchor.widths[g], rng)
        s = Subnet(res[min(max(at, 0), len(res) - 1)], tuple(float(w) for w in widths))
        if s not in exclude and s not in chosen:
            chosen.append(s)
    return chosen
