"""Resource constraints: budget grids and bucket arithmetic.

A constraint is one resource kind with a grid of budget targets ``start:stop:step``. A value's
bucket is the nearest grid point, ties rounding *up* (never to even):
``floor((value - offset) / step + 0.5) * step + offset`` with ``offset = start mod step``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import numpy as np

from .errors import UserError
from .resources import KINDS, UNITS, ResourceMeter
from .space import SearchSpace

# Grid values are rounded to this many decimals so that targets computed two ways compare equal.
_DECIMALS = 6
# Relative slack that keeps exact ties (e.g. 115 with step 10) from rounding down by float error.
_TIE_EPS = 1e-9
# Most budget targets one constraint may have: each target gets a pool and an evaluation.
MAX_TARGETS = 10_000

ArrayLike = Union[float, np.ndarray]


def _clean(x: ArrayLike) -> ArrayLike:
    out = np.round(np.asarray(x, dtype=np.float64), _DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class Constraint:
    """One resource kind and its budget grid ``start, start + step, ..., stop``."""

    kind: str
    start: float
    stop: float
    step: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"unknown constraint type '{self.kind}'; use one of {', '.join(KINDS)}")
        for name in ("start", "stop", "step"):
            value = getattr(self, name)
            if not math.isfinite(float(value)):
                raise UserError(f"constraint {self.kind}: {name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.step <= 0 or self.start < 0 or self.stop < self.start:
            raise UserError(
                f"bad constraint range {self.kind}:{self.start:g}:{self.stop:g}:{self.step:g}; "
                "need 0 <= START <= STOP and STEP > 0"
            )
        if self.count > MAX_TARGETS:  # arithmetic only: a tiny STEP must not allocate first
            raise UserError(f"constraint {self.text} has {self.count:,.0f} targets (at most {MAX_TARGETS:,}); "
                            "use a larger STEP or a narrower range")

    @classmethod
    def parse(cls, text: str) -> "Constraint":
        """Parse ``TYPE:START:STOP:STEP`` (e.g. ``flops:110:570:10``)."""
        parts = text.strip().split(":")
        if len(parts) != 4:
            raise UserError(f"bad constraint '{text}'; write TYPE:START:STOP:STEP, e.g. flops:110:570:10")
        kind, *numbers = parts
        try:
            start, stop, step = (float(n) for n in numbers)
        except ValueError:
            raise UserError(f"bad constraint '{text}'; START, STOP and STEP must be numbers, "
                            "e.g. flops:110:570:10") from None
        return cls(kind.strip(), start, stop, step)

    @property
    def text(self) -> str:
        return f"{self.kind}:{self.start:g}:{self.stop:g}:{self.step:g}"

    @property
    def unit(self) -> str:
        return UNITS[self.kind]

    @property
    def offset(self) -> float:
        return _clean(math.fmod(self.start, self.step))

    @property
    def count(self) -> float:
        """The number of targets (a float: it may be astronomically large before validation)."""
        steps = (self.stop - self.start) / self.step * (1 + _TIE_EPS) + _TIE_EPS
        return math.floor(steps) + 1 if math.isfinite(steps) else math.inf

    @property
    def targets(self) -> tuple[float, ...]:
        return tuple(_clean(self.start + i * self.step) for i in range(int(self.count)))

    def bucket_of(self, value: ArrayLike) -> ArrayLike:
        """The budget bucket of ``value`` (scalar or numpy array), ties rounding up."""
        v = np.asarray(value, dtype=np.float64)
        q = (v - self.offset) / self.step + 0.5
        return _clean(np.floor(q + _TIE_EPS * np.maximum(1.0, np.abs(q))) * self.step + self.offset)

    def target_index(self, value: ArrayLike) -> ArrayLike:
        """Index into :attr:`targets` of ``value``'s bucket, or -1 when it is off the grid."""
        bucket = np.asarray(self.bucket_of(value))
        index = np.rint((bucket - self.start) / self.step).astype(np.int64)
        index = np.where((index >= 0) & (index < len(self.targets)), index, -1)
        return int(index) if index.ndim == 0 else index

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "stop": self.stop, "step": self.step}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Constraint":
        return cls(str(data["kind"]), float(data["start"]), float(data["stop"]), float(data["step"]))


def target_key(target: float) -> str:
    """The JSON key of a budget target (``120.0`` -> ``"120.0"``)."""
    return repr(float(_clean(target)))


def auto_constraint(kind: str, meter: ResourceMeter, space: SearchSpace, count: int = 40,
                    interior: bool = False) -> Constraint:
    """A grid of about ``count`` round-numbered targets spanning the space's range of ``kind``.

    The grid runs from the smallest subnet's bucket to the largest's. ``interior`` drops those two
    end targets, as the reference trains its grids: the sandwich rule already trains the smallest
    and largest subnets every step, so pools next to them would spend samples on near-copies.
    """
    lo, hi = space_span(kind, meter, space)
    raw = max((hi - lo) / max(count - 1, 1), 1e-6)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=10 * magnitude)
    start = math.floor(lo / step + 0.5) * step  # the bucket of the smallest subnet
    stop = max(math.floor(hi / step + 0.5) * step, start)  # the bucket of the largest subnet
    if interior:
        if round((stop - start) / step) < 2:  # both are whole multiples of step
            raise UserError(f"{kind}:interior:{count} leaves no target between the smallest and largest "
                            f"subnets' buckets ({_clean(start):g} and {_clean(stop):g}); raise COUNT")
        start, stop = start + step, stop - step
    return Constraint(kind, _clean(start), _clean(stop), _clean(step))


# The grid forms of ``TYPE:MODE[:COUNT]``: MODE -> whether the end targets are dropped.
AUTO_MODES = {"auto": False, "interior": True}


def _parse_auto(text: str, meter: ResourceMeter | None, space: SearchSpace | None) -> Constraint:
    """The grid of ``TYPE:auto[:COUNT]`` or ``TYPE:interior[:COUNT]`` (default COUNT 40)."""
    kind, mode, *rest = text.strip().split(":")
    if meter is None or space is None:
        raise UserError(f"'{text}' needs a model to size its grid; give START:STOP:STEP instead")
    try:
        count = int(rest[0]) if rest else 40
    except ValueError:
        count = 0
    if not 2 <= count <= MAX_TARGETS:
        raise UserError(f"bad constraint '{text}'; write TYPE:{mode}:COUNT with an integer COUNT "
                        f"from 2 to {MAX_TARGETS:,}")
    if kind not in KINDS:
        raise UserError(f"unknown constraint type '{kind}'; use one of {', '.join(KINDS)}")
    return auto_constraint(kind, meter, space, count, interior=AUTO_MODES[mode])


def space_span(kind: str, meter: ResourceMeter, space: SearchSpace) -> tuple[float, float]:
    """The range of ``kind`` over ``space``: the smallest and the largest subnet's values (sorted:
    a noisy latency table can predict the smallest subnet slower than the largest)."""
    lo, hi = sorted((meter.measure(kind, space.smallest()), meter.measure(kind, space.largest())))
    return lo, hi


def check_reachable(constraints: Sequence[Constraint], meter: ResourceMeter, space: SearchSpace) -> None:
    """Refuse budgets that no subnet of ``space`` can meet: when no constraint has a target
    between the buckets of the smallest and the largest subnet, there is nothing to train for.
    (One constraint out of range beside others only loses its pools, with a warning.)"""
    outside = []
    for c in constraints:
        lo, hi = space_span(c.kind, meter, space)
        if c.start <= c.bucket_of(hi) and c.stop >= c.bucket_of(lo):
            return
        outside.append(f"{c.text} (the subnets span {lo:.4g}..{hi:.4g} {c.unit})")
    if outside:
        raise UserError(f"no budget target can be reached by this search space: {'; '.join(outside)}; "
                        "choose targets inside that range, or TYPE:auto")


def parse_constraints(texts: Sequence[str], meter: ResourceMeter | None = None,
                      space: SearchSpace | None = None) -> list[Constraint]:
    """Parse ``TYPE:START:STOP:STEP``, ``TYPE:auto[:COUNT]`` or ``TYPE:interior[:COUNT]`` texts;
    one constraint per kind. Given a ``meter`` and a ``space``, grids that no subnet reaches are
    refused (:func:`check_reachable`)."""
    constraints = []
    for text in texts:
        parts = text.strip().split(":")
        if len(parts) in (2, 3) and parts[1] in AUTO_MODES:
            constraints.append(_parse_auto(text, meter, space))
        else:
            constraints.append(Constraint.parse(text))
    kinds = [c.kind for c in constraints]
    duplicates = sorted({k for k in kinds if kinds.count(k) > 1})
    if duplicates:
        raise UserError(f"constraint type {', '.join(duplicates)} given more than once; give one range per type")
    if meter is not None and space is not None:
        check_reachable(constraints, meter, space)
    return constraints
