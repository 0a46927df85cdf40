"""Fitted block models: the latency of one block kind as a function of its features.

One model covers the blocks of one family (kind, kernel, stride, structure) at one depth of the
network (:func:`~pssnet.latency.grid.model_key`). Each gets the form with the lowest held-out
error (k-fold cross-validation over whole subnets, relative error):

- ``linear``: a non-negative combination of the features (MACs by convolution type, bytes of
  activations and weights, a per-call constant), what a roofline-like CPU cost looks like;
- ``loglinear``: a power law in the positive features, for devices whose efficiency changes
  smoothly with size;
- ``piecewise``: ``linear`` plus a second set of prices above a working-set breakpoint, chosen
  among quantiles of the samples' working sets: memory traffic changes price where the working
  set outgrows a cache (on the development CPU, MobileNetV2's first stride-2 block at 216-224 px
  took a third longer than the linear form predicted);
- ``macs``: a constant and a price per MAC, what a handful of samples can support.

Only numpy is needed (no scikit-learn): these forms extrapolate smoothly between the sampled
channel counts, and their held-out error is what the build reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .. import schema
from ..schema import FieldError
from .features import FEATURES, Number, stacked

FORMS = ("linear", "loglinear", "piecewise", "macs")
LINEAR_FEATURES = ("one", "macs_pointwise", "macs_depthwise", "macs_dense", "in_bytes", "out_bytes", "mid_bytes",
                   "weight_bytes")
LOG_FEATURES = ("macs", "act_bytes", "weight_bytes", "pixels", "c_in", "c_out")
MACS = ("macs_pointwise", "macs_depthwise", "macs_dense")
FOLDS = 5
# Where the piecewise form may break: these quantiles of the samples' working sets (bytes of a
# block's activations). Memory traffic changes price where the working set outgrows a cache.
BREAK_QUANTILES = (0.2, 0.35, 0.5, 0.65, 0.8)


def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 200) -> np.ndarray:
    """Non-negative least squares, min ||a x - b|| with x >= 0 (Lawson and Hanson's active set)."""
    n = a.shape[1]
    x, passive = np.zeros(n), np.zeros(n, dtype=bool)
    gradient = a.T @ (b - a @ x)
    for _ in range(iterations):
        candidates = np.where(~passive, gradient, -np.inf)
        if passive.all() or candidates.max() <= 1e-12 * max(1.0, np.abs(gradient).max()):
            break
        passive[int(np.argmax(candidates))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                break
            negative = passive & (z <= 0)
            alpha = np.min(x[negative] / (x[negative] - z[negative]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
        x = z
        gradient = a.T @ (b - a @ x)
    return x


def working_set(features: Mapping[str, Number]) -> Number:
    """Bytes of a block's activations: its input, inner tensors and output."""
    return features["in_bytes"] + features["mid_bytes"] + features["out_bytes"]


def _design(form: str, features: Mapping[str, Number], shape: tuple[int, ...], breakpoint: float = 0.0) -> np.ndarray:
    """``[*shape, columns]`` design matrix of ``form`` for features of ``shape`` configurations
    (``breakpoint``: the working set in bytes above which the piecewise form's second piece adds)."""
    if form == "loglinear":
        derived = {"macs": sum(features[m] for m in MACS), "act_bytes": working_set(features)}
        logs = stacked({**features, **derived}, LOG_FEATURES, shape)
        return np.concatenate([np.ones(shape + (1,)), np.log(np.maximum(logs, 1.0))], axis=-1)
    if form == "macs":
        return np.stack([np.ones(shape), np.broadcast_to(sum(np.asarray(features[m], dtype=np.float64) for m in MACS),
                                                         shape)], axis=-1)
    linear = stacked(features, LINEAR_FEATURES, shape)
    if form == "linear":
        return linear
    large = (np.broadcast_to(np.asarray(working_set(features), dtype=np.float64), shape) > breakpoint)[..., None]
    return np.concatenate([linear, np.where(large, linear, 0.0)], axis=-1)


def _solve(form: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Coefficients of ``form`` for design ``x`` and latencies ``y`` (relative error minimised)."""
    if form == "loglinear":
        return np.linalg.lstsq(x, np.log(y), rcond=None)[0]
    # Rows divided by the latency: least squares in relative error. Columns scaled for conditioning.
    scale = np.abs(x).max(axis=0)
    scale[scale == 0] = 1.0
    return nnls(x / scale / y[:, None], np.ones_like(y)) / scale


def _evaluate(form: str, x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    value = x @ coef
    return np.exp(value) if form == "loglinear" else value


@dataclass(frozen=True)
class BlockModel:
    """The fitted latency model (ms) of one block family, with its held-out error."""

    form: str
    coef: tuple[float, ...]
    samples: int
    heldout_mape: float  # percent, k-fold cross-validated
    breakpoint: float = 0.0  # piecewise form: working set (bytes) where the second piece starts
    candidates: Mapping[str, float] = field(default_factory=dict)  # held-out MAPE of every form tried

    def predict(self, features: Mapping[str, Number], shape: tuple[int, ...] = ()) -> np.ndarray:
        """Latency (ms) of configurations with ``features`` broadcast to ``shape``."""
        x = _design(self.form, features, shape, self.breakpoint)
        return np.maximum(_evaluate(self.form, x, np.asarray(self.coef)), 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"form": self.form, "coef": list(self.coef), "samples": self.samples,
                "heldout_mape": self.heldout_mape, "breakpoint": self.breakpoint,
                "candidates": dict(self.candidates)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "BlockModel":
        form = schema.string(schema.require(data, "form", where), f"{where}.form")
        if form not in FORMS:
            raise FieldError(f"field '{where}.form' must be one of {', '.join(FORMS)}, got {form!r}")
        width = _design(form, {n: 1.0 for n in FEATURES}, ()).shape[-1]
        coef = [schema.number(v, f"{where}.coef[{i}]") for i, v in
                enumerate(schema.sequence(schema.require(data, "coef", where), f"{where}.coef", width))]
        candidates = schema.mapping(data.get("candidates", {}), f"{where}.candidates")
        return cls(form, tuple(coef), schema.integer(schema.require(data, "samples", where), f"{where}.samples", low=0),
                   schema.number(schema.require(data, "heldout_mape", where), f"{where}.heldout_mape", low=0.0),
                   schema.number(data.get("breakpoint", 0.0), f"{where}.breakpoint", low=0.0),
                   {str(k): schema.number(v, f"{where}.candidates[{k!r}]", low=0.0) for k, v in candidates.items()})


def _candidates(forms: Sequence[str], rows: Mapping[str, np.ndarray]) -> list[tuple[str, float]]:
    """(form, breakpoint) pairs to try: one per form, the piecewise form at several breakpoints."""
    pairs = []
    for form in forms:
        if form != "piecewise":
            pairs.append((form, 0.0))
            continue
        points = np.unique(np.quantile(working_set(rows), BREAK_QUANTILES))
        pairs += [(form, float(b)) for b in points]
    return pairs


def _heldout(form: str, breakpoint: float, rows: Mapping[str, np.ndarray], y: np.ndarray,
             folds: Sequence[np.ndarray]) -> np.ndarray:
    """Held-out prediction of every sample: fitted without its fold."""
    x = _design(form, rows, (len(y),), breakpoint)
    predicted = np.empty_like(y)
    for test in folds:
        train = np.ones(len(y), dtype=bool)
        train[test] = False
        predicted[test] = _evaluate(form, x[test], _solve(form, x[train], y[train]))
    return predicted


def kfold(groups: Sequence[int] | np.ndarray, folds: int = FOLDS, seed: int = 0) -> list[np.ndarray]:
    """Sample indices of ``folds`` folds; samples of one group (e.g. one subnet) stay together."""
    groups = np.asarray(groups)
    distinct = np.random.default_rng(seed).permutation(np.unique(groups))
    chosen = [distinct[k::folds] for k in range(min(folds, len(distinct)))]
    return [np.flatnonzero(np.isin(groups, c)) for c in chosen]


def fit_family(features: Sequence[Mapping[str, Number]], latencies: Sequence[float],
               groups: Sequence[int] | None = None, forms: Sequence[str] = FORMS) -> tuple[BlockModel, np.ndarray]:
    """The (form, breakpoint) with the lowest held-out error, refitted on every sample, and the
    held-out relative error of every sample under it (for adaptive sampling). ``groups`` keeps
    samples measured together (one subnet's blocks) in one fold."""
    y = np.asarray(latencies, dtype=np.float64)
    rows = {n: np.array([float(f[n]) for f in features]) for n in FEATURES}
    folds = kfold(np.arange(len(y)) if groups is None else groups)
    results = {}
    for form, breakpoint in _candidates(forms, rows):
        width = _design(form, {n: 1.0 for n in FEATURES}, (), breakpoint).shape[-1]
        if len(y) < 2 * width or len(folds) < 2:  # too few samples to fit and hold any out
            continue
        predicted = _heldout(form, breakpoint, rows, y, folds)
        results[(form, breakpoint)] = (float(np.mean(np.abs(predicted - y) / y) * 100), predicted)
    if not results:  # a handful of samples: the per-call constant alone (their mean)
        coef = np.zeros(len(LINEAR_FEATURES))
        coef[0] = float(y.mean())
        errors = np.abs(coef[0] - y) / y
        return BlockModel("linear", tuple(coef.tolist()), len(y), float(errors.mean() * 100)), errors
    best = min(results, key=lambda c: (results[c][0], FORMS.index(c[0])))
    mape, predicted = results[best]
    form, breakpoint = best
    coef = _solve(form, _design(form, rows, (len(y),), breakpoint), y)
    candidates: dict[str, float] = {}
    for (f, _), (m, _) in results.items():
        candidates[f] = round(min(m, candidates.get(f, m)), 3)
    model = BlockModel(form, tuple(float(c) for c in coef), len(y), mape, breakpoint, candidates)
    return model, np.abs(predicted - y) / y


def refit(model: BlockModel, features: Sequence[Mapping[str, Number]], latencies: Sequence[float]) -> BlockModel:
    """``model``'s form and breakpoint fitted on other samples (for held-out end-to-end errors)."""
    y = np.asarray(latencies, dtype=np.float64)
    rows = {n: np.array([float(f[n]) for f in features]) for n in FEATURES}
    x = _design(model.form, rows, (len(y),), model.breakpoint)
    if len(y) < 2 * x.shape[1]:
        coef = np.zeros(x.shape[1])
        coef[0] = float(y.mean()) if model.form != "loglinear" else float(np.log(y).mean())
    else:
        coef = _solve(model.form, x, y)
    return BlockModel(model.form, tuple(float(c) for c in coef), len(y), model.heldout_mape, model.breakpoint)

