"""Constraint-conditioned sampling: draw a subnet whose resource value lies in a target bucket.

Before training, many random subnets are measured (vectorised) and, for every budget target,
the empirical distribution of resolution and of each stage multiplier among the subnets in
that bucket is counted. A draw for target ``t`` samples each dimension from ``t``'s
distributions and retries until the result lands in bucket ``t``.

Uniform multipliers concentrate resources around the middle of the range, so the extreme
targets would get few or no observations. Half of the draws therefore come from
:meth:`~pssnet.space.SearchSpace.sample_spread_arrays`, which spreads them over the whole
range; the smallest and largest subnets are always included.
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
from ..resources import ResourceMeter
from ..space import WIDTH_DECIMALS, SearchSpace, Subnet

MAP_VERSION = 1
_CHUNK = 250_000  # draws measured at once; bounds memory, fixed so results never depend on it
_EXEMPLARS = 32  # observed subnets kept per bucket, the fallback when conditional draws miss
_DRAW_BATCH = 32  # candidates per conditional-draw round
_DRAW_ROUNDS = 8
_SCALE = 10**WIDTH_DECIMALS


def default_cache_dir() -> pathlib.Path:
    """``$PSSNET_CACHE/space_maps``, else ``~/.cache/pssnet/space_maps``."""
    root = os.environ.get("PSSNET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pssnet")
    return pathlib.Path(root) / "space_maps"


def _candidate_draws(space: SearchSpace, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Half uniform subnets (the paper's draws), half spread over the whole size range."""
    n_uniform = n // 2
    res_u, widths_u = space.sample_arrays(n_uniform, rng)
    res_s, widths_s = space.sample_spread_arrays(n - n_uniform, rng)
    return np.concatenate([res_u, res_s]), np.concatenate([widths_u, widths_s])


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

    def draw(self, target_index: int, meter: ResourceMeter, rng: np.random.Generator) -> Subnet:
        """A subnet in bucket ``targets[target_index]``: sample per dimension, retry until it fits.

        After a bounded number of misses it returns one of the bucket's observed subnets.
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
                return Subnet(int(res[i]), tuple(widths[i].tolist()))
        k = int(rng.integers(self.exemplar_counts[target_index]))
        return Subnet(int(self.exemplar_res[target_index, k]), tuple(self.exemplar_widths[target_index, k].tolist()))

    # -- persistence (plain arrays only) ------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        meta = {"constraint": self.constraint.to_dict(), "value_range": list(self.value_range),
                "samples": self.samples, "version": MAP_VERSION}
        return {"meta": np.asarray(json.dumps(meta)), "resolutions": self.resolutions,
                "width_values": self.width_values, "res_counts": self.res_counts,
                "width_counts": self.width_counts, "exemplar_res": self.exemplar_res,
                "exemplar_widths": self.exemplar_widths, "exemplar_counts": self.exemplar_counts}

    @classmethod
    def from_arrays(cls, arrays) -> "SpaceMap":
        meta = json.loads(str(arrays["meta"]))
        if meta.get("version") != MAP_VERSION:
            raise ValueError(f"space map version {meta.get('version')} is not {MAP_VERSION}")
        fields = ("resolutions", "width_values", "res_counts", "width_counts",
                  "exemplar_res", "exemplar_widths", "exemplar_counts")
        return cls(Constraint.from_dict(meta["constraint"]), **{f: np.asarray(arrays[f]) for f in fields},
                   value_range=tuple(meta["value_range"]), samples=int(meta["samples"]))


def _accumulate(space: SearchSpace, constraint: Constraint, meter: ResourceMeter, samples: int,
                rng: np.random.Generator):
    targets, stages = len(constraint.targets), space.num_stages
    resolutions = np.asarray(space.resolutions, dtype=np.int64)
    width_values = space.width_grid()
    res_counts = np.zeros(targets * len(resolutions), dtype=np.int64)
    width_counts = np.zeros(targets * stages * len(width_values), dtype=np.int64)
    ex_res = np.zeros((targets, _EXEMPLARS), dtype=np.int64)
    ex_widths = np.zeros((targets, _EXEMPLARS, stages), dtype=np.float64)
    ex_counts = np.zeros(targets, dtype=np.int64)
    lo, hi = np.inf, -np.inf
    first = np.stack([space.smallest().widths, space.largest().widths])
    for start in range(0, samples, _CHUNK):
        n = min(_CHUNK, samples - start)
        res, widths = _candidate_draws(space, n, rng)
        if start == 0:  # the extremes always take part
            res[:2] = [space.resolutions[0], space.resolutions[-1]]
            widths[:2] = first
        values = meter.measure_arrays(constraint.kind, res, widths)
        lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
        t = constraint.target_index(values)
        keep = t >= 0
        t, res, widths = t[keep], res[keep], widths[keep]
        r_idx = np.searchsorted(resolutions, res)
        w_idx = np.rint((widths - width_values[0]) * _SCALE).astype(np.int64)
        res_counts += np.bincount(t * len(resolutions) + r_idx, minlength=res_counts.size)
        flat = (t[:, None] * stages + np.arange(stages)[None, :]) * len(width_values) + w_idx
        width_counts += np.bincount(flat.ravel(), minlength=width_counts.size)
        # First few observations of each bucket, in draw order (deterministic).
        order = np.argsort(t, kind="stable")
        ts = t[order]
        rank = np.arange(ts.size) - np.searchsorted(ts, ts, side="left") + ex_counts[ts]
        take = rank < _EXEMPLARS
        ex_res[ts[take], rank[take]] = res[order][take]
        ex_widths[ts[take], rank[take]] = widths[order][take]
        ex_counts = np.minimum(ex_counts + np.bincount(ts, minlength=targets), _EXEMPLARS)
    return SpaceMap(constraint, resolutions, width_values,
                    res_counts.reshape(targets, len(resolutions)),
                    width_counts.reshape(targets, stages, len(width_values)),
                    ex_res, ex_widths, ex_counts, (lo, hi), samples)


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
