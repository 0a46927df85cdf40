"""Search space: what a subnet is, how to sample one, and how to validate one.

A subnet is an input resolution plus one width multiplier per searchable stage. It is plain,
frozen data (hashable, JSON-safe) so that pools, checkpoints and bundles never need to
evaluate or unpickle anything to know which subnet they hold.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .schema import FieldError, integer, number, sequence

# Multipliers live on a 0.001 grid (the paper samples 3 decimals); storing them rounded keeps
# equality and hashing exact after a JSON round trip. WIDTH_SCALE turns a multiplier into grid steps.
WIDTH_DECIMALS = 3
WIDTH_SCALE = 10**WIDTH_DECIMALS


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor``, never below it, never >10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def make_divisible_array(values: np.ndarray, divisor: int = 8) -> np.ndarray:
    """Vectorised :func:`make_divisible` (same arithmetic, int64 result)."""
    rounded = np.maximum(divisor, np.floor(values + divisor / 2).astype(np.int64) // divisor * divisor)
    return np.where(rounded < 0.9 * values, rounded + divisor, rounded)


class SpaceError(FieldError):
    """A subnet or search space that is not valid: a user mistake (one line in the CLI) that
    library callers may also catch as ``ValueError``."""


@dataclass(frozen=True)
class Subnet:
    """One member of a supernet: input resolution and a width multiplier per stage."""

    resolution: int
    widths: tuple[float, ...]

    def __post_init__(self) -> None:
        try:  # a resolution of 30.7 or a NaN width would silently become another subnet
            resolution = integer(self.resolution, "resolution", low=1)
            widths = tuple(round(number(w, f"widths[{i}]", low=0.0, low_open=True), WIDTH_DECIMALS)
                           for i, w in enumerate(sequence(self.widths, "widths")))
        except FieldError as exc:
            raise SpaceError(f"not a valid subnet: {exc}") from None
        if not widths:
            raise SpaceError("not a valid subnet: it has no width multipliers")
        object.__setattr__(self, "resolution", resolution)
        object.__setattr__(self, "widths", widths)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form; :meth:`from_dict` inverts it exactly."""
        return {"resolution": self.resolution, "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Subnet":
        if not isinstance(data, dict) or "resolution" not in data or "widths" not in data:
            raise SpaceError(f"not a subnet description: {data!r} (need 'resolution' and 'widths')")
        widths = data["widths"]
        return cls(data["resolution"], tuple(widths) if isinstance(widths, list) else widths)

    @property
    def key(self) -> str:
        """Canonical short string, usable as a JSON object key or a file name."""
        return f"r{self.resolution}-" + "-".join(f"{w:.{WIDTH_DECIMALS}f}" for w in self.widths)

    def __str__(self) -> str:
        return self.key


@dataclass(frozen=True)
class SearchSpace:
    """Resolutions ``min_resolution..max_resolution`` (step) and per-stage multipliers."""

    stage_names: tuple[str, ...]
    min_resolution: int
    max_resolution: int
    resolution_step: int = 8
    min_width: float = 0.75
    max_width: float = 1.0

    def __post_init__(self) -> None:
        if not self.stage_names:
            raise SpaceError("a search space needs at least one stage")
        if not 0 < self.min_resolution <= self.max_resolution or self.resolution_step <= 0:
            raise SpaceError(
                f"bad resolution range {self.min_resolution}:{self.max_resolution}:{self.resolution_step}; "
                "need 0 < min <= max and step > 0"
            )
        if not 0 < self.min_width <= self.max_width:
            raise SpaceError(f"bad width range [{self.min_width}, {self.max_width}]; need 0 < min <= max")

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)

    @cached_property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(range(self.min_resolution, self.max_resolution + 1, self.resolution_step))

    def _width_steps(self) -> tuple[int, int]:
        """The smallest and largest multiplier in grid steps (thousandths)."""
        return round(self.min_width * WIDTH_SCALE), round(self.max_width * WIDTH_SCALE)

    def width_grid(self) -> np.ndarray:
        """Every multiplier a stage can take, ascending: ``min_width..max_width`` step 0.001."""
        lo, hi = self._width_steps()
        return np.arange(lo, hi + 1) / WIDTH_SCALE

    def largest(self) -> Subnet:
        return Subnet(self.resolutions[-1], (self.max_width,) * self.num_stages)

    def smallest(self) -> Subnet:
        return Subnet(self.resolutions[0], (self.min_width,) * self.num_stages)

    def sample(self, rng: random.Random) -> Subnet:
        """A subnet drawn as the reference draws one (see :meth:`sample_arrays`)."""
        lo, hi = self._width_steps()
        widths = tuple(round(rng.uniform(lo, hi)) / WIDTH_SCALE for _ in self.stage_names)
        index = math.floor(rng.uniform(0, len(self.resolutions) - 1) + 0.5)
        return Subnet(self.resolutions[index], widths)

    def sample_arrays(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random subnets as arrays: resolutions ``[n]`` and multipliers ``[n, stages]``.

        The reference's law (``utils/subnet_sampler.py``): a resolution is a uniform real in
        [min, max] rounded to the nearest step (``make_divisible(U(128, 224), 8)``), a multiplier
        a uniform real rounded to 3 decimals. Each end value covers half an interval, so it comes
        up half as often as an inner one.
        """
        lo, hi = self._width_steps()
        index = np.floor(rng.uniform(0, len(self.resolutions) - 1, size=n) + 0.5).astype(np.int64)
        res = np.asarray(self.resolutions, dtype=np.int64)[index]
        widths = np.rint(rng.uniform(lo, hi, size=(n, self.num_stages))) / WIDTH_SCALE
        return res, widths

    def sample_spread_arrays(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` subnets spread over the whole size range, as arrays like :meth:`sample_arrays`.

        Uniform multipliers concentrate resources around the middle of the range. Here each
        subnet's multipliers and resolution scatter around one shared random size level in
        [0, 1] (for half of them pushed towards 0 or 1), so the smallest and largest sizes are
        drawn as often as the middle ones.
        """
        level = rng.random(n)
        level = np.where(rng.random(n) < 0.5, rng.beta(0.25, 0.25, n), level)  # pushed to the extremes
        spread = rng.uniform(0.0, 0.3, (n, 1))
        width_level = np.clip(level[:, None] + spread * rng.standard_normal((n, self.num_stages)), 0.0, 1.0)
        lo, hi = self._width_steps()
        widths = np.rint(lo + width_level * (hi - lo)) / WIDTH_SCALE
        resolutions = np.asarray(self.resolutions, dtype=np.int64)
        res_level = np.clip(level + spread[:, 0] * rng.standard_normal(n), 0.0, 1.0)
        res = resolutions[np.rint(res_level * (len(resolutions) - 1)).astype(np.int64)]
        return res, widths

    def validate(self, subnet: Subnet) -> Subnet:
        """Return ``subnet`` if it belongs to this space, else raise a ValueError naming the fault."""
        if subnet.resolution not in self.resolutions:
            raise SpaceError(
                f"resolution {subnet.resolution} is not in the space "
                f"({self.min_resolution}..{self.max_resolution} step {self.resolution_step})"
            )
        if len(subnet.widths) != self.num_stages:
            raise SpaceError(
                f"subnet has {len(subnet.widths)} widths but the space has {self.num_stages} stages "
                f"({', '.join(self.stage_names)})"
            )
        for name, w in zip(self.stage_names, subnet.widths):
            if not self.min_width - 1e-9 <= w <= self.max_width + 1e-9:
                raise SpaceError(
                    f"width {w} of stage '{name}' is outside [{self.min_width}, {self.max_width}]"
                )
        return subnet

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage_names": list(self.stage_names),
            "min_resolution": self.min_resolution,
            "max_resolution": self.max_resolution,
            "resolution_step": self.resolution_step,
            "min_width": self.min_width,
            "max_width": self.max_width,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchSpace":
        return cls(**{**data, "stage_names": tuple(data["stage_names"])})


def subnets_from_arrays(resolutions: np.ndarray, widths: np.ndarray) -> list[Subnet]:
    """Turn array rows (as from :meth:`SearchSpace.sample_arrays`) into :class:`Subnet` objects."""
    return [Subnet(int(r), tuple(w)) for r, w in zip(resolutions.tolist(), widths.tolist())]

