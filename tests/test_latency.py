"""Latency tables: block enumeration, measuring and resuming, prediction, errors, CLI."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

import pssnet
from pssnet import create_supernet, extract_subnet
from pssnet.cli import main
from pssnet.errors import UserError
from pssnet.latency import FORMAT, LatencyTable, block_input_sizes, build_table, enumerate_configs, subnet_keys
from pssnet.latency.features import part_features
from pssnet.latency.keys import layout_parts
from pssnet.space import subnets_from_arrays
from pssnet.timing import MeasureSettings

FAST = MeasureSettings(warmup=0, repeats=1, rounds=1, min_sample_ms=0.0)
REDUCED = dict(num_classes=10, in_chans=1, small_input=True, resolutions=(24, 28, 4), width_range=(0.9, 1.0))
# Narrower spaces for architectures whose full small-input space has very many configurations.
NARROW = {"resnet50": dict(width_range=(0.95, 1.0))}


def _field(key: str, prefix: str) -> int:
    return next(int(part[len(prefix):]) for part in key.split("|")
                if part.startswith(prefix) and part[len(prefix):].isdigit())


def _synthetic_table(net, seed: int = 0) -> LatencyTable:
    rng = np.random.default_rng(seed)
    entries = {key: float(rng.uniform(0.01, 1.0)) for key in enumerate_configs(net.layout, net.space)}
    return LatencyTable(entries, {"type": "cpu"}, net.config.to_dict(), overhead_ms=0.25)


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    """A real table measured here for the reduced small-input MobileNetV2 space."""
    torch.set_num_threads(1)
    net = create_supernet("mobilenet_v2", **REDUCED)
    path = tmp_path_factory.mktemp("lut") / "tiny.json"
    table = build_table(net, FAST, path, progress=False)
    return net, table, path


@pytest.mark.parametrize("arch, kwargs", [
    *[(arch, dict(small_input=True, **NARROW.get(arch, {}))) for arch in sorted(pssnet.ARCHITECTURES)],
    ("mobilenet_v2", dict(small_input=False)),
])
def test_enumeration_covers_the_blocks_of_random_subnets(arch, kwargs):
    net = create_supernet(arch, num_classes=10, in_chans=1, **kwargs)
    configs = enumerate_configs(net.layout, net.space)
    rng = random.Random(1)
    for _ in range(1000):
        subnet = net.space.sample(rng)
        missing = [k for k in subnet_keys(net.layout, subnet) if k not in configs]
        assert not missing, (subnet, missing)
    # The extremes, which uniform sampling rarely hits, too.
    for subnet in (net.space.smallest(), net.space.largest()):
        assert all(k in configs for k in subnet_keys(net.layout, subnet))


def test_every_enumerated_configuration_is_reachable():
    # On a small space, enough random subnets produce exactly the enumerated set: nothing extra.
    net = create_supernet("mobilenet_v2", **REDUCED)
    configs = enumerate_configs(net.layout, net.space)
    res, widths = net.space.sample_arrays(6000, np.random.default_rng(0))
    seen = {k for s in subnets_from_arrays(res, widths) for k in subnet_keys(net.layout, s)}
    assert seen == set(configs)


def test_tied_groups_give_only_equal_channels():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    configs = enumerate_configs(net.layout, net.space)
    residual = [k for k in configs if k.endswith("+id")]
    assert residual and all(_field(k, "in") == _field(k, "out") for k in residual)
    # Expansion blocks: mid is 6x the block's own input channels, never another combination.
    expanded = [k for k in configs if k.startswith("inverted_residual") and "c1-relu6,dw" in k]
    assert expanded and all(_field(k, "mid") == 6 * _field(k, "in") for k in expanded)


def test_keys_describe_the_extracted_modules():
    # Independent truth: shapes seen by the deployed static subnet's blocks, via forward hooks.
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True).eval()
    rng = random.Random(3)
    for subnet in [net.space.smallest(), net.space.largest()] + [net.space.sample(rng) for _ in range(3)]:
        static = extract_subnet(net, subnet)
        seen = []
        hooks = [block.register_forward_hook(
            lambda m, inp, out: seen.append((inp[0].shape, m.body[0].conv.out_channels, out.shape)))
            for block in static.features]
        with torch.no_grad():
            static(torch.randn(1, 1, subnet.resolution, subnet.resolution))
        for h in hooks:
            h.remove()
        keys = subnet_keys(net.layout, subnet)
        for key, (shape_in, first_out, shape_out) in zip(keys, seen):
            assert _field(key, "s") == shape_in[-1]
            assert _field(key, "in") == shape_in[1]
            assert _field(key, "out") == shape_out[1]
            assert _field(key, "mid") == first_out
        assert _field(keys[-1], "s") == seen[-1][2][-1]
        assert _field(keys[-1], "in") == static.classifier[-1].in_features
        assert len(keys) == len(static.features) + 1


def test_block_input_sizes_follow_the_strides():
    net = create_supernet("resnet50", num_classes=10)  # 7x7/2 stem + max-pool, then strides 1,2,2,2
    sizes = block_input_sizes(net.layout, 224)
    assert sizes[:2] == [224, 56] and sizes[-1] == 7


def test_tiny_table_is_measured_complete_and_saved(tiny_table):
    net, table, path = tiny_table
    configs = enumerate_configs(net.layout, net.space)
    assert set(table.entries) == set(configs) and table.complete
    assert all(np.isfinite(v) and v > 0 for v in table.entries.values())
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["device"]["type"] == "cpu" and data["device"]["threads"] == 1
    assert data["batch"] == 1 and data["arch"] == "mobilenet_v2" and data["small_input"] is True
    assert data["device"]["torch"] == torch.__version__
    assert data["method"] == "exhaustive" and data["correction"]["subnets"] == len(table.timings) >= 24
    # Prediction: overhead + scale x the sum of the subnet's entries (+ the memory terms, if chosen).
    s = net.space.largest()
    c = data["correction"]
    channels, sizes = net.layout.group_channels(s.widths), block_input_sizes(net.layout, s.resolution)
    features = [part_features(p, sizes[p.position], channels) for p in layout_parts(net.layout)]
    expected = (data["overhead_ms"] + c["scale"] * sum(data["entries"][k] for k in subnet_keys(net.layout, s))
                + c["weight_ms_per_mb"] * sum(f["weight_bytes"] for f in features) / 1e6
                + c["act_ms_per_mb"] * sum(f["in_bytes"] + f["out_bytes"] for f in features) / 1e6)
    assert table.predict(net.layout, s) == pytest.approx(expected)


def test_json_round_trip(tiny_table, tmp_path):
    net, table, path = tiny_table
    loaded = LatencyTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    assert LatencyTable.from_dict(json.loads(json.dumps(table.to_dict()))).to_dict() == table.to_dict()
    loaded.save(tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text()) == json.loads(path.read_text())
    assert loaded.device == "cpu"
    s = net.space.sample(random.Random(0))
    assert loaded.predict(net.layout, s) == table.predict(net.layout, s)


@pytest.mark.slow
def test_build_resumes_after_interruption(tmp_path, monkeypatch):
    import pssnet.timing as timing

    net = create_supernet("mobilenet_v2", **{**REDUCED, "resolutions": (24, 24, 4)})
    path = tmp_path / "lut.json"
    real = timing.time_calls
    measured: list[str] = []

    def interrupted(calls, settings, on_round=None):
        if measured:
            raise KeyboardInterrupt
        measured.extend(calls)
        return real(calls, settings, on_round)

    monkeypatch.setattr(timing, "time_calls", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_table(net, FAST, path, save_every=10, progress=False)
    partial = LatencyTable.load(path)
    assert not partial.complete and set(partial.entries) == set(measured) and len(measured) == 10

    def counting(calls, settings, on_round=None):
        measured.extend(calls)
        return real(calls, settings, on_round)

    monkeypatch.setattr(timing, "time_calls", counting)
    measured.clear()
    table = build_table(net, FAST, path, save_every=10, progress=False)
    configs = enumerate_configs(net.layout, net.space)
    assert table.complete and set(table.entries) == set(configs)
    # Resumed: only the missing entries were measured (whole subnets are timed by time_in_context).
    assert set(measured) == set(configs) - set(partial.entries)
    assert all(table.entries[k] == v for k, v in partial.entries.items())

    with pytest.raises(UserError, match="--force"):
        build_table(net, MeasureSettings(batch=2, warmup=0, repeats=1, rounds=1), path, progress=False)
    forced = build_table(net, MeasureSettings(batch=2, warmup=0, repeats=1, rounds=1), path, force=True,
                         progress=False)
    assert forced.batch == 2 and LatencyTable.load(path).batch == 2


def test_missing_entry_is_a_clear_error(tiny_table):
    net, table, _ = tiny_table
    s = net.space.largest()
    dropped = subnet_keys(net.layout, s)[5]
    broken = LatencyTable({k: v for k, v in table.entries.items() if k != dropped}, table.device_info,
                          table.model_config, source="tiny.json")
    with pytest.raises(UserError, match=r"no latency entry for block 5 .* in tiny\.json: rebuild the table "
                                        r"with `pssnet lut build --arch mobilenet_v2 --small-input"):
        broken.predict(net.layout, s)
    res, widths = net.space.sample_arrays(100, np.random.default_rng(0))
    res[7], widths[7] = s.resolution, s.widths
    with pytest.raises(UserError, match="no latency entry for block 5"):
        broken.predict_arrays(net.layout, res, widths)
    # A table for another space (wider widths) names the classifier or block it lacks.
    other = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    with pytest.raises(UserError, match="no latency entry"):
        table.predict(other.layout, other.space.smallest())


@pytest.mark.parametrize("arch", sorted(pssnet.ARCHITECTURES))
def test_scalar_and_vectorised_predictions_agree(arch):
    net = create_supernet(arch, num_classes=10, in_chans=1, small_input=True, **NARROW.get(arch, {}))
    table = _synthetic_table(net)
    res, widths = net.space.sample_arrays(2000, np.random.default_rng(5))
    vectorised = table.predict_arrays(net.layout, res, widths)
    scalar = [table.predict(net.layout, s) for s in subnets_from_arrays(res, widths)]
    np.testing.assert_allclose(vectorised, scalar, rtol=1e-12)


def test_vectorised_prediction_handles_a_million_subnets():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    table = _synthetic_table(net)
    res, widths = net.space.sample_arrays(1_000_000, np.random.default_rng(0))
    values = table.predict_arrays(net.layout, res, widths)
    assert values.shape == (1_000_000,) and np.isfinite(values).all()
    assert values[123] == pytest.approx(table.predict(net.layout, subnets_from_arrays(res[123:124], widths[123:124])[0]))


def test_bad_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        LatencyTable.load(tmp_path / "nope.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        LatencyTable.load(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(UserError, match="not a pssnet-lut/2 table"):
        LatencyTable.load(tmp_path / "other.json")
    with pytest.raises(UserError):
        MeasureSettings(device="tpu")


@pytest.mark.slow
def test_cli_build_and_show(tmp_path, capsys):
    out = tmp_path / "cli.json"
    argv = ["lut", "build", "--arch", "mobilenet_v2", "--small-input", "--num-classes", "10", "--in-chans", "1",
            "--resolutions", "24:24:4", "--width-range", "0.95:1.0", "--threads", "1", "--warmup", "0",
            "--repeats", "1", "--rounds", "1", "-o", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "distinct block configurations" in text and f"wrote {out}" in text
    table = LatencyTable.load(out)
    assert table.complete and table.device_info["threads"] == 1
    assert main(argv) == 0  # resumes: nothing left to measure
    assert LatencyTable.load(out).entries == table.entries
    assert main(["lut", "show", str(out)]) == 0
    assert "entries" in capsys.readouterr().out
    assert main(argv[:-2] + ["--batch", "0", "-o", str(tmp_path / "x.json")]) == 2
    assert "batch" in capsys.readouterr().err
