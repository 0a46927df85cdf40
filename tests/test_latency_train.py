"""Latency tables inside training: ResourceMeter kinds and a multi-constraint (flops + latency) run."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from pssnet import count_flops, create_supernet
from pssnet.cli import main
from pssnet.resources import ResourceMeter
from pssnet.errors import UserError
from pssnet.latency import LatencyTable, build_table
from pssnet.timing import MeasureSettings

pytestmark = pytest.mark.slow  # every test here takes several seconds

# The space `pssnet train --data fashion-mnist-mini --resolutions 28:28:4` trains (28 px, small input).
SPACE = dict(num_classes=10, in_chans=1, small_input=True, resolutions=(28, 28, 4))


@pytest.fixture(scope="module")
def train_lut(tmp_path_factory):
    torch.set_num_threads(1)
    net = create_supernet("mobilenet_v2", **SPACE)
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    build_table(net, MeasureSettings(warmup=0, repeats=1, rounds=1, min_sample_ms=0.0), path, progress=False)
    return net, path


def test_resource_meter_measures_latency_with_the_table(train_lut):
    net, path = train_lut
    table = LatencyTable.load(path)
    meter = ResourceMeter(net.layout, {"latency_cpu": table})
    rng = random.Random(0)
    subnets = [net.space.sample(rng) for _ in range(50)]
    for s in subnets[:5]:
        assert meter.measure("latency_cpu", s) == pytest.approx(table.predict(net.layout, s))
        assert set(meter.measure_all(s)) == {"flops", "params", "latency_cpu"}
    res, widths = net.space.sample_arrays(5000, np.random.default_rng(0))
    np.testing.assert_allclose(meter.measure_arrays("latency_cpu", res, widths),
                               table.predict_arrays(net.layout, res, widths))
    with pytest.raises(UserError, match="latency_gpu needs a latency table"):
        meter.measure("latency_gpu", subnets[0])
    with pytest.raises(UserError, match="measured on 'cpu'"):
        ResourceMeter(net.layout, {"latency_gpu": table})


def test_multi_constraint_training_with_flops_and_cpu_latency(train_lut, tmp_path):
    net, path = train_lut
    table = LatencyTable.load(path)
    small, large = net.space.smallest(), net.space.largest()
    # The range comes from sampled predictions, not the two extremes: a one-repeat table is noisy enough
    # that the smallest subnet can be predicted slower than the largest.
    res, widths = net.space.sample_arrays(5000, np.random.default_rng(0))
    predicted = table.predict_arrays(net.layout, res, widths)
    lat_lo, lat_hi = float(np.quantile(predicted, 0.05)), float(np.quantile(predicted, 0.95))
    lat_step = round((lat_hi - lat_lo) / 4, 3)
    flops_lo, flops_hi = math.floor(count_flops(net, small)), math.ceil(count_flops(net, large))
    out = tmp_path / "run"
    argv = ["train", "--arch", "mobilenet_v2", "--data", "fashion-mnist-mini", "--resolutions", "28:28:4",
            "--constraint", f"flops:{flops_lo}:{flops_hi}:{max(1, (flops_hi - flops_lo) // 4)}",
            "--constraint", f"latency_cpu:{lat_lo:.3f}:{lat_lo + 4 * lat_step:.3f}:{lat_step:.3f}",
            "--lut", str(path), "--max-iters", "3", "--batch-size", "8", "--threads", "1", "--no-progress",
            "--map-samples", "20000", "--out", str(out)]
    assert main(argv) == 0

    from pssnet.training.checkpoint import load_run

    run = load_run(out)
    assert {c.kind for c in run.constraints} == {"flops", "latency_cpu"}
    assert run.luts["latency_cpu"] == table.to_dict()
    assert run.iterations == 3
    config = json.loads((out / "config.json").read_text())
    assert str(path) in json.dumps(config)
    # The latency pools are keyed by the grid's reachable targets (a one-repeat table measured on a busy
    # machine can leave a gap in the predicted range); every pooled subnet lies in its target's bucket.
    reachable = config["resolved"]["reachable_targets"]["latency_cpu"]
    assert sorted(map(float, run.pools["latency_cpu"])) == pytest.approx(reachable) and len(reachable) >= 3
    meter = ResourceMeter(net.layout, {"latency_cpu": table})
    steps = {"flops": max(1, (flops_hi - flops_lo) // 4), "latency_cpu": lat_step}
    members = 0
    for kind, pools in run.pools.items():
        for target, pool in pools.items():
            for subnet, _ in pool:
                value = meter.measure(kind, subnet)
                assert abs(value - float(target)) <= steps[kind] / 2 + 1e-3
                members += 1
    assert members >= 1


@pytest.mark.parametrize("arch, preset", [("mobilenet_v1", "mbv1-cpu"), ("resnet50", "r50-cpu")])
def test_cpu_latency_presets_train_with_a_fitted_table(arch, preset, tmp_path):
    # The preset's own space (ImageNet sizes, 128..224 px) with the data's classes and channels: a fitted
    # table from a few whole subnets timed once (seconds), then two iterations at batch 2.
    from pssnet.latency import FitSettings

    net = create_supernet(arch, num_classes=10, in_chans=1, small_input=False)
    lut = tmp_path / "fitted.json"
    table = build_table(net, MeasureSettings(threads=1, warmup=0, repeats=1, rounds=1, min_sample_ms=0.0), lut,
                        progress=False, plan=FitSettings(fit=True, budget_minutes=0.01, first_sample=6))
    assert table.method == "fitted" and table.models and len(table) < table.build["space_entries"]
    out = tmp_path / "run"
    assert main(["train", "--preset", preset, "--data", "fashion-mnist-mini", "--lut", str(lut), "--max-iters", "2",
                 "--batch-size", "2", "--threads", "1", "--no-progress", "--map-samples", "20000",
                 "--out", str(out)]) == 0

    from pssnet.training.checkpoint import load_run

    run = load_run(out)
    assert run.iterations == 2 and run.luts["latency_cpu"] == LatencyTable.load(lut).to_dict()
    meter = ResourceMeter(net.layout, {"latency_cpu": LatencyTable.from_dict(run.luts["latency_cpu"])})
    pooled = [subnet for pool in run.pools["latency_cpu"].values() for subnet, _ in pool]
    assert pooled and all(np.isfinite(meter.measure("latency_cpu", s)) for s in pooled)
