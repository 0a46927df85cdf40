"""Constraint-conditioned sampling: draw a subnet whose resource value lies in a target bucket.

Before training, ``samples`` uniform random subnets (the paper's draws, by the reference's law:
:meth:`~pssnet.space.SearchSpace.sample_arrays`) are measured
(vectorised) and, for every budget target, the empirical distribution of resolution and of each
stage multiplier among the subnets in that bucket is counted. A draw for target ``t`` samples
each dimension from ``t``'s distributions and retries until the result lands in bucket ``t``;
it returns the subnet's canonical form (:func:`~pssnet.layout.canonicalize`).

Uniform multipliers concentrate resources around the middle of the range, so the extreme
targets get few or no uniform observations. Only those thin buckets (under
:data:`THIN_BUCKET` uniform observations) get extra draws from
:meth:`~pssnet.space.SearchSpace.sample_spread_arrays`, which spread over the whole range; the
extra draws count for the thin buckets alone, so every other bucket keeps the paper's
distribution. The map records which buckets were filled that way.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from dataclasses import dataclass

import numpy as np

from ..constraints import Constraint
from ..errors import UserError
from ..fileio import atomic_write
from ..layout import canonical_subnet
from ..resources import ResourceMeter
from ..space import WIDTH_SCALE, SearchSpace, Subnet

MAP_VERSION = 3  # 3: the reference's sampling law (SearchSpace.sample_arrays), MobileNetV2 with 8 widths
THIN_BUCKET = 300  # uniform observations below which a bucket's histograms come from spread draws
_CHUNK = 250_000  # draws measured at once; bounds memory, fixed so results never depend on it
_SPREAD_CHUNK = 50_000  # spread draws per round for the thin buckets (at most ``samples`` in all)
_EXEMPLARS = 32  # observed subnets kept per bucket, the fallback when conditional draws miss
_DRAW_BATCH = 32  # candidates per conditional-draw round
_DRAW_ROUNDS = 8


def default_cache_dir() -> pathlib.Path:
    """``$PSSNET_CACHE/space_maps``, else ``~/.cache/pssnet/space_maps``."""
    root = os.environ.get("PSSNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pssnet")
    return pathlib.Path(root) / "space_maps"


@dataclass
class SpaceMap:
    """Per-target distributions of resolution and multipliers, plus observed exemplars."""

    constraint: Constraint
    resolutions: np.ndarray  # [R] the space's resolutions
    width_values: np.ndarray  # [V] the multiplier grid
    res_counts: np.ndarray  # [T, R]
    width_counts: np.ndarray  # [T, G, V]
    exemplar_res: np.ndarray  # [T, K]
    exemplar_widths: np.ndarray  # [T, K, G]
    exemplar_counts: np.ndarray  # [T]
    value_range: tuple[float, float]  # smallest and largest value seen
    samples: int
    spread_filled: np.ndarray  # [T] bool: histograms filled with spread draws (thin under uniform draws)

    def __post_init__(self) -> None:
        counts = self.res_counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            self._res_cdf = np.cumsum(self.res_counts, axis=1) / counts
            self._width_cdf = np.cumsum(self.width_counts, axis=2) / counts[:, :, None]

    @property
    def observations(self) -> np.ndarray:
        """Subnets seen per target ``[T]``."""
        return self.res_counts.sum(axis=1)

    @property
    def reachable_targets(self) -> tuple[float, ...]:
        return tuple(t for t, n in zip(self.constraint.targets, self.observations) if n > 0)

    @property
    def unreachable_targets(self) -> tuple[float, ...]:
        return tuple(t for t, n in zip(self.constraint.targets, self.observations) if n == 0)

    def unreachable_message(self) -> str | None:
        """One line naming every target no subnet reached, or None when all are reachable."""
        missing = self.unreachable_targets
        if not missing:
            return None
        c = self.constraint
        lo, hi = self.value_range
        return (f"{len(missing)} of {len(c.targets)} {c.kind} targets cannot be reached by this search space "
                f"and get no pool: {', '.join(f'{t:g}' for t in missing)} {c.unit} (subnets span "
                f"{lo:.4g}..{hi:.4g} {c.unit} in {self.samples:,} draws)")

    @property
    def spread_filled_targets(self) -> tuple[float, ...]:
        """Reachable targets whose histograms came from spread draws (too thin under uniform draws)."""
        return tuple(t for t, thin, n in zip(self.constraint.targets, self.spread_filled, self.observations)
                     if thin and n > 0)

    def spread_filled_message(self) -> str | None:
        """One line naming the targets filled with spread draws, or None when there are none."""
        thin = self.spread_filled_targets
        if not thin:
            return None
        c = self.constraint
        return (f"{len(thin)} of {len(c.targets)} {c.kind} targets had under {THIN_BUCKET} of {self.samples:,} "
                f"uniform draws and were filled with spread draws: {', '.join(f'{t:g}' for t in thin)} {c.unit}")

    def draw(self, target_index: int, meter: ResourceMeter, rng: np.random.Generator) -> Subnet:
        """A canonical subnet in bucket ``targets[target_index]``: sample per dimension, retry
        until it fits. After a bounded number of misses it returns one of the bucket's observed subnets.
        """
        if self.observations[target_index] == 0:
            raise UserError(f"{self.constraint.kind} target {self.constraint.targets[target_index]:g} "
                            "is unreachable; choose a target inside the space's range")
        stages = self.width_counts.shape[1]
        for _ in range(_DRAW_ROUNDS):
            u = rng.random((_DRAW_BATCH, 1 + stages))
            res_idx = (u[:, :1] >= self._res_cdf[target_index][None, :]).sum(axis=1)
            w_idx = (u[:, 1:, None] >= self._width_cdf[target_index][None]).sum(axis=2)
            res = self.resolutions[np.minimum(res_idx, len(self.resolutions) - 1)]
            widths = self.width_values[np.minimum(w_idx, len(self.width_values) - 1)]
            hits = np.flatnonzero(self.constraint.target_index(meter.measure_arrays(self.constraint.kind, res, widths))
                                  == target_index)
            if hits.size:
                i = hits[0]
                return canonical_subnet(meter.layout, self.width_values, int(res[i]), widths[i])
        k = int(rng.integers(self.exemplar_counts[target_index]))
        return canonical_subnet(meter.layout, self.width_values, int(self.exemplar_res[target_index, k]),
                                self.exemplar_widths[target_index, k])

    # -- persistence (plain arrays only) ------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {"constraint": self.constraint.to_dict(), "value_range": list(self.value_range),
                "samples": self.samples, "version": MAP_VERSION}
        return {"meta": np.asarray(json.dumps(meta)), "resolutions": self.resolutions,
                "width_values": self.width_values, "res_counts": self.res_counts,
                "width_counts": self.width_counts, "exemplar_res": self.exemplar_res,
                "exemplar_widths": self.exemplar_widths, "exemplar_counts": self.exemplar_counts,
                "spread_filled": self.spread_filled}

    @classmethod
    def from_arrays(cls, arrays) -> "SpaceMap":
        meta = json.loads(str(arrays["meta"]))
        if meta.get("version") != MAP_VERSION:
            raise ValueError(f"space map version {meta.get('version')} is not {MAP_VERSION}")
        fields = ("resolutions", "width_values", "res_counts", "width_counts",
                  "exemplar_res", "exemplar_widths", "exemplar_counts", "spread_filled")
        return cls(Constraint.from_dict(meta["constraint"]), **{f: np.asarray(arrays[f]) for f in fields[:7]},
                   value_range=tuple(meta["value_range"]), samples=int(meta["samples"]),
                   spread_filled=np.asarray(arrays["spread_filled"], dtype=bool))


class _Tally:
    """Running per-bucket counts of resolution and multipliers, and each bucket's first exemplars."""

    def __init__(self, space: SearchSpace, targets: int) -> None:
        self.resolutions = np.asarray(space.resolutions, dtype=np.int64)
        self.width_values = space.width_grid()
        self.targets, self.stages = targets, space.num_stages
        self.res_counts = np.zeros(targets * len(self.resolutions), dtype=np.int64)
        self.width_counts = np.zeros(targets * self.stages * len(self.width_values), dtype=np.int64)
        self.ex_res = np.zeros((targets, _EXEMPLARS), dtype=np.int64)
        self.ex_widths = np.zeros((targets, _EXEMPLARS, self.stages), dtype=np.float64)
        self.ex_counts = np.zeros(targets, dtype=np.int64)

    def observations(self) -> np.ndarray:
        return self.res_counts.reshape(self.targets, -1).sum(axis=1)

    def add(self, t: np.ndarray, res: np.ndarray, widths: np.ndarray) -> None:
        """Count subnets ``res``/``widths`` into buckets ``t`` (valid target indices)."""
        stages, n_res, n_w = self.stages, len(self.resolutions), len(self.width_values)
        r_idx = np.searchsorted(self.resolutions, res)
        w_idx = np.rint((widths - self.width_values[0]) * WIDTH_SCALE).astype(np.int64)
        self.res_counts += np.bincount(t * n_res + r_idx, minlength=self.res_counts.size)
        flat = (t[:, None] * stages + np.arange(stages)[None, :]) * n_w + w_idx
        self.width_counts += np.bincount(flat.ravel(), minlength=self.width_counts.size)
        # First few observations of each bucket, in draw order (deterministic).
        order = np.argsort(t, kind="stable")
        ts = t[order]
        rank = np.arange(ts.size) - np.searchsorted(ts, ts, side="left") + self.ex_counts[ts]
        take = rank < _EXEMPLARS
        self.ex_res[ts[take], rank[take]] = res[order][take]
        self.ex_widths[ts[take], rank[take]] = widths[order][take]
        self.ex_counts = np.minimum(self.ex_counts + np.bincount(ts, minlength=self.targets), _EXEMPLARS)


def _measure_chunk(res: np.ndarray, widths: np.ndarray, constraint: Constraint, meter: ResourceMeter,
                   bounds: list[float]) -> np.ndarray:
    """Target index of every subnet (-1 off the grid); widens ``bounds`` (lo, hi) to the values seen."""
    values = meter.measure_arrays(constraint.kind, res, widths)
    bounds[0], bounds[1] = min(bounds[0], float(values.min())), max(bounds[1], float(values.max()))
    return constraint.target_index(values)


def _within_range(constraint: Constraint, lo: float, hi: float) -> np.ndarray:
    """``[T]`` bool: targets whose bucket lies between the buckets of the smallest and largest value."""
    first, last = (np.rint((constraint.bucket_of(v) - constraint.start) / constraint.step) for v in (lo, hi))
    index = np.arange(len(constraint.targets))
    return (index >= first) & (index <= last)


def _accumulate(space: SearchSpace, constraint: Constraint, meter: ResourceMeter, samples: int,
                rng: np.random.Generator) -> SpaceMap:
    """``samples`` uniform draws for every bucket, then spread draws for the thin buckets only."""
    tally = _Tally(space, len(constraint.targets))
    bounds = [np.inf, -np.inf]
    for start in range(0, samples, _CHUNK):
        res, widths = space.sample_arrays(min(_CHUNK, samples - start), rng)
        if start == 0:  # the extremes always take part
            res[:2] = [space.resolutions[0], space.resolutions[-1]]
            widths[:2] = np.stack([space.smallest().widths, space.largest().widths])
        t = _measure_chunk(res, widths, constraint, meter, bounds)
        keep = t >= 0
        tally.add(t[keep], res[keep], widths[keep])
    uniform_observations = tally.observations()
    thin = uniform_observations < THIN_BUCKET
    # Buckets outside the space's range stay empty whatever is drawn: never wait for them.
    wanted = thin & _within_range(constraint, *bounds)
    spread = 0
    while spread < samples and (tally.observations()[wanted] < THIN_BUCKET).any():
        res, widths = space.sample_spread_arrays(min(_SPREAD_CHUNK, samples - spread), rng)
        spread += len(res)
        t = _measure_chunk(res, widths, constraint, meter, bounds)
        keep = t >= 0
        keep[keep] = thin[t[keep]]
        tally.add(t[keep], res[keep], widths[keep])
    n_res, n_w = len(tally.resolutions), len(tally.width_values)
    return SpaceMap(constraint, tally.resolutions, tally.width_values,
                    tally.res_counts.reshape(-1, n_res), tally.width_counts.reshape(-1, space.num_stages, n_w),
                    tally.ex_res, tally.ex_widths, tally.ex_counts, (bounds[0], bounds[1]), samples,
                    thin & (tally.observations() > uniform_observations))


def map_cache_key(space: SearchSpace, constraint: Constraint, meter: ResourceMeter, samples: int, seed: int) -> str:
    """Hash of everything a map depends on: layout, space, constraint, table, sample count, seed."""
    table = meter.luts.get(constraint.kind)
    inputs = {
        "version": MAP_VERSION, "layout": repr(meter.layout), "space": space.to_dict(),
        "constraint": constraint.to_dict(), "samples": samples, "seed": seed,
        "table": json.dumps(table.to_dict(), sort_keys=True) if table is not None else None,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:24]


def build_space_map(space: SearchSpace, constraint: Constraint, meter: ResourceMeter, samples: int = 1_000_000,
                    seed: int = 0, cache_dir: str | os.PathLike | None = None) -> SpaceMap:
    """Build (or load from ``cache_dir``) the map of ``samples`` random subnets for ``constraint``."""
    if samples < 2:
        raise UserError(f"a space map needs at least 2 samples, got {samples}; use e.g. --map-samples 100000")
    path = None
    if cache_dir is not None:
        key = map_cache_key(space, constraint, meter, samples, seed)
        path = pathlib.Path(cache_dir) / f"spacemap-{constraint.kind}-{key}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as arrays:
                    return SpaceMap.from_arrays(arrays)
            except (OSError, ValueError, KeyError):
                pass  # unreadable or stale cache file: rebuild and overwrite it
    rng = np.random.Generator(np.random.PCG64([seed, 0x5EAC]))
    space_map = _accumulate(space, constraint, meter, samples, rng)
    if path is not None:
        arrays = space_map.to_arrays()

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
                np.savez(f, **arrays)

        atomic_write(path, write)
    return space_map
