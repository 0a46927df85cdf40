"""The end-to-end correction: from a sum over blocks to a whole network's latency.

Blocks timed one by one miss part of what a whole network pays: caches refilled between
blocks, the allocator, module traversal. Whole subnets timed end to end (the build's carrier
subnets) fit a correction that stays a sum over blocks, so predictions stay vectorised:

``latency = overhead + scale * sum(block values) + w * sum(weight MB) + a * sum(activation MB)``

- ``offset``: the overhead alone (scale 1, no memory terms);
- ``scale``: overhead and scale;
- ``memory``: also a price per MB of weights and of activations (what a cold cache refills).

The form with the lowest held-out end-to-end error (leave one subnet out) is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from .. import schema
from ..schema import FieldError
from .fit import nnls

FORMS = ("offset", "scale", "memory")
# The blocks are the network: their sum carries at least this share of its latency. Without the
# bound, a few noisy subnets could fit a scale near 0 and predict one latency for every subnet.
MIN_SCALE = 0.5
_MIN_SUBNETS = {"offset": 2, "scale": 4, "memory": 8}  # fewer leave nothing to hold out


@dataclass(frozen=True)
class Correction:
    """Scale and memory prices of the end-to-end correction (its constant is the table's
    ``overhead_ms``), with the held-out error of the end-to-end predictions it gives."""

    form: str = "offset"
    scale: float = 1.0
    weight_ms_per_mb: float = 0.0
    act_ms_per_mb: float = 0.0
    subnets: int = 0  # whole subnets it was fitted on
    heldout: Mapping[str, float] = field(default_factory=dict)  # mape, within_10pct, bias_pct
    candidates: Mapping[str, float] = field(default_factory=dict)  # held-out MAPE of every form tried

    @property
    def uses_memory(self) -> bool:
        return self.weight_ms_per_mb != 0.0 or self.act_ms_per_mb != 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "scale": self.scale, "weight_ms_per_mb": self.weight_ms_per_mb,
                "act_ms_per_mb": self.act_ms_per_mb, "subnets": self.subnets, "heldout": dict(self.heldout),
                "candidates": dict(self.candidates)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "correction") -> "Correction":
        form = schema.string(schema.require(data, "form", where), f"{where}.form")
        if form not in FORMS:
            raise FieldError(f"field '{where}.form' must be one of {', '.join(FORMS)}, got {form!r}")

        def numbers(name: str) -> dict[str, float]:
            values = schema.mapping(data.get(name, {}), f"{where}.{name}")
            return {str(k): schema.number(v, f"{where}.{name}[{k!r}]") for k, v in values.items()}

        return cls(form, schema.number(schema.require(data, "scale", where), f"{where}.scale", low=0.0),
                   schema.number(data.get("weight_ms_per_mb", 0.0), f"{where}.weight_ms_per_mb", low=0.0),
                   schema.number(data.get("act_ms_per_mb", 0.0), f"{where}.act_ms_per_mb", low=0.0),
                   schema.integer(data.get("subnets", 0), f"{where}.subnets", low=0),
                   numbers("heldout"), numbers("candidates"))


def _design(form: str, sums: np.ndarray, weight_mb: np.ndarray, act_mb: np.ndarray) -> np.ndarray:
    # The constant enters twice with opposite signs: non-negative least squares leaves it free.
    one = np.ones_like(sums)
    columns = {"offset": [one, -one], "scale": [one, -one, sums], "memory": [one, -one, sums, weight_mb, act_mb]}
    return np.stack(columns[form], axis=1)


def _solve(form: str, x: np.ndarray, sums: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Coefficients (constant+, constant-, scale, per weight MB, per activation MB)."""
    if form == "offset":  # the median gap: robust to a few disturbed subnets
        gap = float(np.median(totals - sums))
        return np.array([max(gap, 0.0), max(-gap, 0.0), 1.0, 0.0, 0.0])
    # Relative error; the scale is MIN_SCALE plus a non-negative part.
    coef = nnls(x / totals[:, None], 1 - MIN_SCALE * sums / totals)
    coef[2] += MIN_SCALE
    return np.concatenate([coef, np.zeros(5 - len(coef))])


def _predict(form: str, coef: np.ndarray, x: np.ndarray, sums: np.ndarray) -> np.ndarray:
    if form == "offset":
        return sums + coef[0] - coef[1]
    return x @ coef[:x.shape[1]]


def errors_of(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """MAPE (%), the fraction within +-10 % and the mean bias (%) of ``predicted``."""
    relative = (np.asarray(predicted, dtype=np.float64) - measured) / measured
    return {"mape": float(np.mean(np.abs(relative)) * 100), "within_10pct": float(np.mean(np.abs(relative) <= 0.1)),
            "bias_pct": float(np.mean(relative) * 100)}


def _leave_one_out(form: str, sums: np.ndarray, weight_mb: np.ndarray, act_mb: np.ndarray,
                   totals: np.ndarray) -> np.ndarray:
    x = _design(form, sums, weight_mb, act_mb)
    predicted = np.empty_like(totals)
    for i in range(len(totals)):
        keep = np.arange(len(totals)) != i
        coef = _solve(form, x[keep], sums[keep], totals[keep])
        predicted[i] = _predict(form, coef, x[i:i + 1], sums[i:i + 1])[0]
    return predicted


def fit_correction(sums: np.ndarray, weight_mb: np.ndarray, act_mb: np.ndarray,
                   totals: np.ndarray) -> tuple[float, Correction]:
    """(overhead ms, correction) of the form with the lowest leave-one-out error, fitted on every
    subnet: ``sums`` of block values, MB of weights and activations, measured end-to-end ``totals``."""
    sums, weight_mb, act_mb, totals = (np.asarray(a, dtype=np.float64) for a in (sums, weight_mb, act_mb, totals))
    if len(totals) < _MIN_SUBNETS["offset"]:
        return float(np.median(totals - sums)) if len(totals) else 0.0, Correction(subnets=len(totals))
    heldout = {form: _leave_one_out(form, sums, weight_mb, act_mb, totals)
               for form in FORMS if len(totals) >= _MIN_SUBNETS[form]}
    mape = {form: errors_of(p, totals)["mape"] for form, p in heldout.items()}
    best = min(mape, key=lambda f: (round(mape[f], 2), FORMS.index(f)))  # a simpler form on a near tie
    x = _design(best, sums, weight_mb, act_mb)
    coef = _solve(best, x, sums, totals)
    correction = Correction(best, float(coef[2]), float(coef[3]), float(coef[4]), len(totals),
                            errors_of(heldout[best], totals), {f: round(m, 3) for f, m in mape.items()})
    return float(coef[0] - coef[1]), correction
