"""Fitted latency tables: block models and the end-to-end correction on known laws, a fitted build
on a synthetic device, measured versus predicted entries, the v1 and v2 formats, resuming."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import pssnet
from pssnet import create_supernet
from pssnet.cli import main
from pssnet.errors import UserError
from pssnet.latency import (
    AUTO_FIT_ABOVE, FitSettings, LatencyTable, build_table, count_configs, enumerate_configs, subnet_keys,
)
from pssnet.latency import build as build_module
from pssnet.latency.correction import fit_correction
from pssnet.latency.features import FEATURES, part_features
from pssnet.latency.fit import fit_family
from pssnet.latency.grid import model_key
from pssnet.latency.keys import block_input_sizes, layout_parts
from pssnet.latency.sampling import stratified_subnets
from pssnet.space import subnets_from_arrays
from pssnet.timing import MeasureSettings

FAST = MeasureSettings(threads=1, warmup=0, repeats=1, rounds=2, min_sample_ms=0.0)
SPACE = dict(num_classes=10, in_chans=1, small_input=True, resolutions=(24, 32, 4), width_range=(0.8, 1.0))


def _law(features) -> float:
    """A synthetic device: 20 us per call, 1 ns per MAC (3 ns depthwise), 0.1 ns per activation byte."""
    macs = features["macs_pointwise"] + features["macs_dense"] + 3 * features["macs_depthwise"]
    act = features["in_bytes"] + features["mid_bytes"] + features["out_bytes"]
    return 0.02 + 1e-6 * macs + 1e-7 * act


def _true_latency(net, subnet) -> float:
    """What the synthetic device takes end to end: 1.1 x the blocks, plus 0.3 ms per network."""
    channels = net.layout.group_channels(subnet.widths)
    sizes = block_input_sizes(net.layout, subnet.resolution)
    return 0.3 + 1.1 * sum(_law(part_features(p, sizes[p.position], channels)) for p in layout_parts(net.layout))


def _synthetic_device(monkeypatch, net, seen: list | None = None, fail_after: int | None = None,
                      slow_down: float = 1.0) -> None:
    """Replace whole-subnet timing with the synthetic device (1 % noise per sample); after the first
    call it runs ``slow_down`` times slower (a shared machine under more load)."""
    rng = np.random.default_rng(0)
    calls = []

    def fake(net_, subnets, settings, on_round=None):
        calls.append(len(subnets))
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt
        if seen is not None:
            seen.extend(subnets)
        out = {}
        for s in subnets:
            channels = net.layout.group_channels(s.widths)
            sizes = block_input_sizes(net.layout, s.resolution)
            parts = [_law(part_features(p, sizes[p.position], channels)) for p in layout_parts(net.layout)]
            noise = 1 + 0.01 * rng.standard_normal((settings.rounds, len(parts)))
            sample = np.array(parts) * noise
            total = 0.3 + 1.1 * sample.sum(axis=1, keepdims=True)
            out[s.key] = np.hstack([sample, total]) * (slow_down if len(calls) > 1 else 1.0)
        return out

    monkeypatch.setattr(build_module, "time_in_context", fake)


def _rows(net, subnets, part_index):
    part = layout_parts(net.layout)[part_index]
    features = []
    for s in subnets:
        channels = net.layout.group_channels(s.widths)
        features.append(part_features(part, block_input_sizes(net.layout, s.resolution)[part.position], channels))
    return features


# ---------------------------------------------------------------- models on known laws


def test_block_model_recovers_a_linear_law():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=3)
    rng = random.Random(0)
    train, test = [net.space.sample(rng) for _ in range(60)], [net.space.sample(rng) for _ in range(30)]
    part = 5  # an inverted-residual block with expansion
    features = _rows(net, train, part)
    noise = np.random.default_rng(1).normal(1, 0.005, len(features))
    model, errors = fit_family(features, [_law(f) * n for f, n in zip(features, noise)])
    assert model.heldout_mape < 1.5 and errors.shape == (60,)
    held = _rows(net, test, part)
    predicted = model.predict({n: np.array([float(f[n]) for f in held]) for n in FEATURES}, (len(held),))
    truth = np.array([_law(f) for f in held])
    assert np.max(np.abs(predicted / truth - 1)) < 0.02


def test_block_model_finds_a_break_in_the_working_set():
    # Memory traffic four times dearer above a working set: the piecewise form wins and fits it.
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=3)
    rng = random.Random(2)
    subnets = [net.space.sample(rng) for _ in range(120)]
    features = _rows(net, subnets, 2)
    working = np.array([f["in_bytes"] + f["mid_bytes"] + f["out_bytes"] for f in features])
    threshold = float(np.median(working))
    law = np.array([_law(f) for f in features]) + np.where(working > threshold, 3e-7 * working, 0.0)
    model, _ = fit_family(features, law)
    assert model.form == "piecewise" and model.heldout_mape < 2.0
    assert model.candidates["linear"] > 2 * model.heldout_mape


def test_correction_recovers_scale_and_overhead():
    rng = np.random.default_rng(0)
    sums = rng.uniform(5, 20, 40)
    totals = 0.5 + 1.2 * sums
    overhead, correction = fit_correction(sums, rng.uniform(1, 5, 40), rng.uniform(1, 5, 40), totals)
    assert correction.form == "scale" and correction.subnets == 40
    assert correction.scale == pytest.approx(1.2, rel=1e-3) and overhead == pytest.approx(0.5, abs=1e-2)
    assert correction.heldout["mape"] < 0.1 and correction.heldout["within_10pct"] == 1.0
    # A constant gap alone is the offset form (a tie goes to the simpler form).
    overhead, correction = fit_correction(sums, sums * 0, sums * 0, sums + 0.7)
    assert correction.form == "offset" and overhead == pytest.approx(0.7)


# ---------------------------------------------------------------- a fitted build on a synthetic device


@pytest.fixture()
def synthetic_fit(monkeypatch, tmp_path):
    net = create_supernet("mobilenet_v2", **SPACE)
    _synthetic_device(monkeypatch, net)
    path = tmp_path / "fit.json"
    table = build_table(net, FAST, path, progress=False, plan=FitSettings(fit=True, budget_minutes=0.05))
    return net, table, path


def test_fitted_build_predicts_the_synthetic_device(synthetic_fit):
    net, table, _ = synthetic_fit
    assert table.method == "fitted" and table.complete and len(table.timings) >= 24
    res, widths = net.space.sample_arrays(200, np.random.default_rng(7))
    predicted = table.predict_arrays(net.layout, res, widths)
    truth = np.array([_true_latency(net, s) for s in subnets_from_arrays(res, widths)])
    assert np.max(np.abs(predicted / truth - 1)) < 0.03
    assert table.correction.scale == pytest.approx(1.1, rel=0.05)
    assert table.correction.heldout["within_10pct"] == 1.0
    assert all(m.heldout_mape < 3 for m in table.models.values())
    assert table.build["rounds"] and table.build["seconds"] > 0


def test_fitted_table_records_measured_and_predicted_entries(synthetic_fit):
    net, table, _ = synthetic_fit
    configs = enumerate_configs(net.layout, net.space)
    assert set(table.entries) < set(configs) and table.build["space_entries"] == len(configs)
    # Every block kind has a model; measured entries are used as measured, the rest comes from the model.
    assert {model_key(p) for p in layout_parts(net.layout)} == set(table.models)
    rng = random.Random(3)
    measured = predicted = 0
    for s in [rng.choice(table.timings).subnet for _ in range(5)] + [net.space.sample(rng) for _ in range(20)]:
        channels = net.layout.group_channels(s.widths)
        sizes = block_input_sizes(net.layout, s.resolution)
        for part, key in zip(layout_parts(net.layout), subnet_keys(net.layout, s)):
            value = table.part_value(net.layout, part, sizes[part.position], channels)
            if key in table.entries:
                measured += 1
                assert value == table.entries[key]
            else:
                predicted += 1
                assert value == pytest.approx(_law(part_features(part, sizes[part.position], channels)), rel=0.03)
    assert measured and predicted


def test_fitted_predictions_agree_scalar_and_vectorised(synthetic_fit):
    net, table, path = synthetic_fit
    loaded = LatencyTable.load(path)
    res, widths = net.space.sample_arrays(500, np.random.default_rng(5))
    vectorised = loaded.predict_arrays(net.layout, res, widths)
    scalar = [loaded.predict(net.layout, s) for s in subnets_from_arrays(res, widths)]
    np.testing.assert_allclose(vectorised, scalar, rtol=1e-9)
    np.testing.assert_allclose(vectorised, table.predict_arrays(net.layout, res, widths), rtol=1e-12)


def test_fitted_table_refuses_subnets_outside_its_space(synthetic_fit):
    net, table, _ = synthetic_fit
    wider = create_supernet("mobilenet_v2", **{**SPACE, "resolutions": (24, 40, 4)})
    with pytest.raises(UserError, match="outside the resolutions 24..32"):
        table.predict(net.layout, wider.space.largest())
    with pytest.raises(UserError, match="outside the range 0.8..1.0"):
        table.predict_arrays(net.layout, np.array([28]), np.full((1, len(net.layout.base_channels)), 0.75))


def test_fitted_build_resumes_after_interruption(monkeypatch, tmp_path):
    net = create_supernet("mobilenet_v2", **SPACE)
    path = tmp_path / "fit.json"
    first: list = []
    _synthetic_device(monkeypatch, net, seen=first, fail_after=1)
    with pytest.raises(KeyboardInterrupt):
        build_table(net, FAST, path, progress=False, plan=FitSettings(fit=True, budget_minutes=0.05))
    partial = LatencyTable.load(path)
    assert not partial.complete and partial.method == "fitted"
    assert [t.subnet for t in partial.timings] == first and len(first) == build_module.CHUNK_SUBNETS
    spent = partial.build["seconds"]

    again: list = []
    _synthetic_device(monkeypatch, net, seen=again)
    table = build_table(net, FAST, path, progress=False, plan=FitSettings(fit=True, budget_minutes=0.05))
    # Only what was missing was timed (with the smallest and largest again, for the machine's pace).
    assert table.complete and set(again) & set(first) == set(first[:2])
    assert [t.subnet for t in table.timings[:len(first)]] == first
    assert table.build["seconds"] >= spent
    with pytest.raises(UserError, match="built --fit"):
        build_table(net, FAST, path, progress=False, plan=FitSettings(exhaustive=True))


def test_chunks_timed_at_another_pace_are_brought_to_the_first_ones(monkeypatch):
    # The machine runs 30 % slower after the first chunk: the references timed again with every
    # chunk measure it, and the table still predicts the device's law.
    net = create_supernet("mobilenet_v2", **SPACE)
    _synthetic_device(monkeypatch, net, slow_down=1.3)
    table = build_table(net, FAST, None, progress=False, plan=FitSettings(fit=True, budget_minutes=0.05))
    assert table.build["pace"] and all(p == pytest.approx(1.3, rel=0.03) for p in table.build["pace"])
    res, widths = net.space.sample_arrays(100, np.random.default_rng(8))
    truth = np.array([_true_latency(net, s) for s in subnets_from_arrays(res, widths)])
    assert np.max(np.abs(table.predict_arrays(net.layout, res, widths) / truth - 1)) < 0.03


def test_method_follows_the_space_size_unless_forced():
    assert FitSettings().method(AUTO_FIT_ABOVE) == "exhaustive"
    assert FitSettings().method(AUTO_FIT_ABOVE + 1) == "fitted"
    assert FitSettings(fit=True).method(10) == "fitted"
    assert FitSettings(exhaustive=True).method(10**6) == "exhaustive"
    with pytest.raises(UserError, match="exclude each other"):
        FitSettings(fit=True, exhaustive=True)
    with pytest.raises(UserError, match="--budget-minutes"):
        FitSettings(budget_minutes=0)


@pytest.mark.parametrize("arch", sorted(pssnet.ARCHITECTURES))
def test_counting_matches_enumeration(arch):
    net = create_supernet(arch, num_classes=10, in_chans=1, small_input=True,
                          **({"width_range": (0.9, 1.0)} if arch == "resnet50" else {}))
    assert count_configs(net.layout, net.space) == len(enumerate_configs(net.layout, net.space))


def test_stratified_subnets_cover_every_resolution_and_the_width_range():
    net = create_supernet("mobilenet_v2", num_classes=1000, in_chans=3)
    subnets = stratified_subnets(net.space, 54, seed=0)
    assert len(set(subnets)) == 54 and net.space.smallest() in subnets and net.space.largest() in subnets
    assert {s.resolution for s in subnets} == set(net.space.resolutions)
    widths = np.array([s.widths for s in subnets[2:]])
    for column in widths.T:  # one Latin-hypercube column per stage: every tenth of the range is hit
        assert len(np.unique(np.floor((column - 0.75) / 0.025).clip(0, 9))) == 10


# ---------------------------------------------------------------- formats


def test_v1_tables_are_read_as_before(tmp_path):
    net = create_supernet("mobilenet_v2", **SPACE)
    rng = np.random.default_rng(0)
    entries = {k: float(rng.uniform(0.01, 1)) for k in enumerate_configs(net.layout, net.space)}
    v1 = {"format": "pssnet-lut/1", "device": {"type": "cpu"}, "arch": "mobilenet_v2", "small_input": True,
          "num_classes": 10, "in_chans": 1, "resolutions": [24, 32, 4], "width_range": [0.8, 1.0], "batch": 1,
          "settings": {}, "complete": True, "overhead_ms": 0.25, "entries": entries}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(v1))
    table = LatencyTable.load(path)
    assert table.method == "exhaustive" and not table.models and table.correction.form == "offset"
    s = net.space.sample(random.Random(0))
    assert table.predict(net.layout, s) == pytest.approx(0.25 + sum(entries[k] for k in subnet_keys(net.layout, s)))
    table.save(tmp_path / "v2.json")  # written back as the current format
    assert json.loads((tmp_path / "v2.json").read_text())["format"] == "pssnet-lut/2"


def test_v2_round_trip_keeps_models_correction_and_timings(synthetic_fit, tmp_path):
    net, table, path = synthetic_fit
    data = json.loads(path.read_text())
    assert data["format"] == "pssnet-lut/2" and data["method"] == "fitted"
    assert set(data["models"]) == set(table.models) and len(data["subnets"]) == len(table.timings)
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    assert loaded.timings == table.timings and loaded.correction == table.correction
    loaded.save(tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text()) == data


@pytest.mark.parametrize("change, field", [
    (lambda d: d["models"][next(iter(d["models"]))].update(form="tree"), "form' must be one of"),
    (lambda d: d["models"][next(iter(d["models"]))].update(coef=[1.0]), "coef' must have"),
    (lambda d: d["correction"].update(scale=-1), "correction.scale' must be >= 0"),
    (lambda d: d.update(method="guessed"), "'method' must be one of"),
    (lambda d: d["subnets"][0].update(total_ms=0), r"subnets\[0\].total_ms' must be > 0"),
])
def test_damaged_v2_fields_name_the_field(synthetic_fit, tmp_path, change, field):
    _, _, path = synthetic_fit
    data = json.loads(path.read_text())
    change(data)
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(UserError, match=field) as info:
        LatencyTable.load(broken)
    assert str(broken) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_fitted_build_and_show(tmp_path, capsys):
    out = tmp_path / "fit.json"
    argv = ["lut", "build", "--arch", "mobilenet_v2", "--small-input", "--num-classes", "10", "--in-chans", "1",
            "--resolutions", "24:28:4", "--width-range", "0.9:1.0", "--threads", "1", "--warmup", "0",
            "--repeats", "1", "--rounds", "1", "--fit", "--budget-minutes", "0.01", "--first-sample", "8",
            "-o", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "fitted build" in text and "whole subnets timed" in text and "held-out error" in text
    table = LatencyTable.load(out)
    assert table.method == "fitted" and table.complete and len(table.timings) >= 8
    assert main(["lut", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "fitted table" in shown and f"of {table.build['space_entries']} entries measured" in shown
    assert "block models" in shown and "held-out" in shown
    assert main(argv[:-2] + ["--exhaustive", "-o", str(out)]) == 2
    assert "exclude each other" in capsys.readouterr().err
