"""Fitting a table to its whole-subnet timings: block models, measured entries, correction.

A fitted table's block models learn each block kind's time inside whole subnets; its entries
are the configurations measured there (mean over the subnets that held them). The end-to-end
correction is fitted on held-out sums: each subnet's blocks predicted by models and entries
fitted without it (five folds over subnets), so the correction sees the errors a new subnet
will have, and its leave-one-out error is an honest end-to-end error. An exhaustive table
keeps its entries and fits the correction on their sums.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..layout import Layout
from ..supernet import Supernet
from .context import SubnetTiming
from .correction import fit_correction
from .features import FEATURES, part_features
from .fit import BlockModel, fit_family, kfold, refit
from .grid import model_key
from .keys import Part, block_input_sizes, layout_parts
from .table import MB, LatencyTable


@dataclass
class _Samples:
    """The measured blocks of one model key: which subnet, which configuration, its features and time."""

    part: Part
    timing: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    features: list[Mapping[str, Any]] = field(default_factory=list)

    def rows(self, index: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        return {n: np.array([float(self.features[i][n]) for i in index]) for n in FEATURES}


def _samples(layout: Layout, timings: Sequence[SubnetTiming]) -> tuple[dict[str, _Samples], np.ndarray, np.ndarray]:
    """Samples by model key, and each subnet's MB of weights and of block inputs and outputs."""
    parts = layout_parts(layout)
    by_model: dict[str, _Samples] = {}
    weight_mb, act_mb = np.zeros(len(timings)), np.zeros(len(timings))
    for i, t in enumerate(timings):
        if len(t.parts_ms) != len(parts):
            raise UserError(f"a timed subnet has {len(t.parts_ms)} parts but {layout.name} has {len(parts)}: "
                            "the table was built for another network; rebuild it with --force")
        channels = layout.group_channels(t.subnet.widths)
        sizes = block_input_sizes(layout, t.subnet.resolution)
        for part in parts:
            size = sizes[part.position]
            features = part_features(part, size, channels)
            weight_mb[i] += features["weight_bytes"] / MB
            act_mb[i] += (features["in_bytes"] + features["out_bytes"]) / MB
            s = by_model.setdefault(model_key(part), _Samples(part))
            s.timing.append(i)
            s.keys.append(part.key(size, channels))
            s.values.append(t.parts_ms[part.position])
            s.features.append(features)
    return by_model, weight_mb, act_mb


def _entries(samples: _Samples, index: Sequence[int] | np.ndarray) -> dict[str, float]:
    """Mean measured time of each configuration among the samples at ``index``."""
    sums: dict[str, list[float]] = {}
    for i in index:
        sums.setdefault(samples.keys[i], []).append(samples.values[i])
    return {k: float(np.mean(v)) for k, v in sums.items()}


def _out_of_fold_sums(by_model: Mapping[str, _Samples], models: Mapping[str, BlockModel], count: int) -> np.ndarray:
    """Each subnet's sum over blocks, predicted by models and entries fitted without its fold."""
    sums = np.zeros(count)
    for fold in kfold(np.arange(count)):
        held = np.zeros(count, dtype=bool)
        held[fold] = True
        for mk, s in by_model.items():
            timing = np.asarray(s.timing)
            train, test = np.flatnonzero(~held[timing]), np.flatnonzero(held[timing])
            if not len(test):
                continue
            model = refit(models[mk], [s.features[i] for i in train], [s.values[i] for i in train])
            known = _entries(s, train)
            predicted = model.predict(s.rows(test), (len(test),))
            for i, p in zip(test, predicted):
                sums[timing[i]] += known.get(s.keys[i], float(p))
    return sums


def refit_fitted(net: Supernet, table: LatencyTable, reference: int) -> dict[str, Any]:
    """Fit ``table``'s block models, entries and correction to its whole-subnet timings.

    Returns the held-out block error on the first ``reference`` subnets (the stratified sample:
    targeted subnets are harder by design, so errors over them would not compare from round to
    round), weighted by each kind's share of the latency (``weighted_mape``, %); and anchors
    (subnet, stages of a block) with weights (held-out error times share of its subnet's
    latency) for targeting the next subnets.
    """
    timings = table.timings
    by_model, weight_mb, act_mb = _samples(net.layout, timings)
    totals = np.array([t.total_ms for t in timings])
    models, anchors, weights, shares, reference_mape = {}, [], [], {}, {}
    for mk, s in by_model.items():
        model, errors = fit_family(s.features, s.values, s.timing)
        models[mk] = model
        shares[mk] = float(np.sum(s.values))
        reference_mape[mk] = float(np.mean(errors[np.asarray(s.timing) < reference]) * 100)
        anchors += [(timings[t].subnet, s.part.groups) for t in s.timing]
        weights += list(errors * np.asarray(s.values) / totals[np.asarray(s.timing)])
    entries: dict[str, float] = {}
    for s in by_model.values():
        entries.update(_entries(s, range(len(s.values))))
    sums = _out_of_fold_sums(by_model, models, len(timings))
    table.models, table.entries = models, entries
    table.overhead_ms, table.correction = fit_correction(sums, weight_mb, act_mb, totals)
    total_share = sum(shares.values())
    weighted = sum(reference_mape[mk] * shares[mk] / total_share for mk in models)
    return {"weighted_mape": float(weighted), "anchors": anchors, "weights": weights}


def refit_exhaustive(net: Supernet, table: LatencyTable) -> None:
    """Fit an exhaustive table's correction to the sums of its entries over its timed subnets."""
    layout = net.layout
    _, weight_mb, act_mb = _samples(layout, table.timings)
    parts = layout_parts(layout)
    sums = np.zeros(len(table.timings))
    for i, t in enumerate(table.timings):
        channels = layout.group_channels(t.subnet.widths)
        sizes = block_input_sizes(layout, t.subnet.resolution)
        sums[i] = sum(table.part_value(layout, p, sizes[p.position], channels) for p in parts)
    totals = np.array([t.total_ms for t in table.timings])
    table.overhead_ms, table.correction = fit_correction(sums, weight_mb, act_mb, totals)
