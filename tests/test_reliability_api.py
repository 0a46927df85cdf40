"""Issue 11, section 3 (Python API): every number and file read is validated, with errors that
name the field (and the file); user mistakes are UserErrors that are also ValueErrors."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch

import pssnet
from pssnet.calibration import recalibrate_bn
from pssnet.constraints import MAX_TARGETS, Constraint, parse_constraints
from pssnet.deploy import BUNDLE_FORMAT, AdaptiveNet, save_bundle
from pssnet.errors import UserError
from pssnet.latency import LatencyTable
from pssnet.latency.table import FORMAT as LUT_FORMAT
from pssnet.resources import ResourceMeter
from pssnet.schema import FieldError
from pssnet.space import SpaceError, Subnet
from pssnet.training.checkpoint import load_run
from test_deploy_fixtures import CONSTRAINT, tiny_supernet

# ---------------------------------------------------------------- constraints


@pytest.mark.parametrize("text", ["flops:1:1e9:1e-9", "flops:0:1e9:1e-300", "flops:0:10000:1"])
def test_a_huge_target_count_is_refused_before_anything_is_allocated(text):
    t0 = time.perf_counter()
    with pytest.raises(UserError, match="targets .at most 10,000.; use a larger STEP"):
        Constraint.parse(text)
    assert time.perf_counter() - t0 < 1.0


def test_the_target_limit_is_inclusive():
    assert len(Constraint.parse(f"flops:1:{MAX_TARGETS}:1").targets) == MAX_TARGETS


@pytest.mark.parametrize("count", ["1000000000", "-3", "1", "x", "2.5"])
def test_auto_count_must_be_an_integer_from_2_to_10000_not_clamped(count):
    net = tiny_supernet()
    with pytest.raises(UserError, match="integer COUNT from 2 to 10,000"):
        parse_constraints([f"flops:auto:{count}"], ResourceMeter(net.layout), net.space)


# ---------------------------------------------------------------- subnets and create_supernet


@pytest.mark.parametrize("resolution, widths, field", [
    (30.7, (1.0,), "resolution"), (-32, (1.0,), "resolution"), (0, (1.0,), "resolution"),
    (True, (1.0,), "resolution"), ("32", (1.0,), "resolution"),
    (32, (math.nan,), r"widths\[0\]"), (32, (1.0, -0.5), r"widths\[1\]"), (32, (math.inf,), r"widths\[0\]"),
    (32, ("0.9",), r"widths\[0\]"),
])
def test_subnet_values_are_validated_at_construction(resolution, widths, field):
    with pytest.raises(SpaceError, match=field):
        Subnet(resolution, widths)
    with pytest.raises(ValueError, match=field):
        Subnet.from_dict({"resolution": resolution, "widths": list(widths)})


def test_from_dict_no_longer_truncates_a_fractional_resolution():
    assert Subnet.from_dict({"resolution": 32.0, "widths": [0.9]}) == Subnet(32, (0.9,))
    with pytest.raises(ValueError, match="resolution' must be an integer, got 30.7"):
        Subnet.from_dict({"resolution": 30.7, "widths": [0.9]})
    with pytest.raises(SpaceError, match="need 'resolution' and 'widths'"):
        Subnet.from_dict({"widths": [0.9]})


@pytest.mark.parametrize("kwargs, field", [
    ({"num_classes": "ten"}, "num_classes"), ({"num_classes": 0}, "num_classes"),
    ({"in_chans": 2.5}, "in_chans"), ({"in_chans": -1}, "in_chans"),
    ({"resolutions": (12, 20)}, "resolutions"), ({"resolutions": (12, "x", 4)}, r"resolutions\[1\]"),
    ({"width_range": (math.nan, 1.0)}, r"width_range\[0\]"), ({"width_range": 0.75}, "width_range"),
    ({"dropout": 1.0}, "dropout"), ({"dropout": "0.1"}, "dropout"), ({"small_input": "yes"}, "small_input"),
])
def test_create_supernet_names_the_bad_argument(kwargs, field):
    with pytest.raises(FieldError, match=field) as info:
        pssnet.create_supernet("mobilenet_v2", **kwargs)
    assert isinstance(info.value, ValueError) and isinstance(info.value, UserError)


def test_unknown_architecture_is_a_user_error_and_a_value_error():
    for name in ("mobilenet_v9", ["mobilenet_v2"]):
        with pytest.raises(FieldError, match="unknown architecture"):
            pssnet.create_supernet(name)
    with pytest.raises(ValueError):
        pssnet.create_supernet("mobilenet_v9")


def test_calibration_with_bad_batches_is_a_user_error_and_a_type_error():
    net = tiny_supernet()
    with pytest.raises(TypeError, match="must be a tensor or an .inputs, labels. pair"):
        recalibrate_bn(net, ["not a tensor"])
    with pytest.raises(UserError):
        recalibrate_bn(net, [{"x": 1}])


# ---------------------------------------------------------------- bundles


def valid_bundle() -> dict:
    """A small bundle made by hand: two retained subnets with stored BN statistics."""
    net = tiny_supernet()
    chosen = [net.space.smallest(), net.space.largest()]
    stats = {name: {"mean": torch.randn(2, bn.num_features), "var": torch.rand(2, bn.num_features) + 0.5}
             for name, bn in net.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)}
    return {
        "format": BUNDLE_FORMAT, "model_config": net.config.to_dict(), "state_dict": net.state_dict(),
        "constraints": [CONSTRAINT.to_dict()], "sampler": "pss", "select_on": "holdout", "data": None,
        "image_size": 20, "luts": {},
        "subnets": [{"subnet": s.to_dict(), "labels": [f"flops:{i}"], "resources": {"flops": pssnet.count_flops(net, s)},
                     "holdout_acc": 50.0 + i, "test_acc": 40.0} for i, s in enumerate(chosen)],
        "bn_stats": stats,
    }


def _first_bn(bundle: dict) -> str:
    return next(iter(bundle["bn_stats"]))


def _drop_bn_stats(b):
    del b["bn_stats"]


def _wrong_shape(b):
    b["bn_stats"][_first_bn(b)]["mean"] = b["bn_stats"][_first_bn(b)]["mean"][:1]


def _wrong_channels(b):
    b["bn_stats"][_first_bn(b)]["var"] = torch.ones(2, 3)


def _nan_stats(b):
    b["bn_stats"][_first_bn(b)]["mean"][0, 0] = math.nan


def _negative_var(b):
    b["bn_stats"][_first_bn(b)]["var"][1, 0] = -1.0


def _missing_layer(b):
    del b["bn_stats"][_first_bn(b)]


def _nan_resources(b):
    b["subnets"][0]["resources"]["flops"] = math.nan


def _huge_resolution(b):
    b["subnets"][1]["subnet"]["resolution"] = 10**6


def _float_resolution(b):
    b["subnets"][1]["subnet"]["resolution"] = 19.5


def _accuracy_over_100(b):
    b["subnets"][0]["test_acc"] = 250.0


def _string_config(b):
    b["model_config"]["num_classes"] = "ten"


def _subnets_not_a_list(b):
    b["subnets"] = {"a": 1}


def _unknown_resource(b):
    b["subnets"][0]["resources"]["watts"] = 3.0


BUNDLE_FAULTS = [
    (_drop_bn_stats, "'bn_stats' is missing"),
    (_wrong_shape, r"bn_stats\..*\.mean' must be a float tensor of shape \[2, \d+\].*got \(1, \d+\)"),
    (_wrong_channels, r"bn_stats\..*\.var' must be a float tensor of shape \[2, \d+\]"),
    (_nan_stats, r"bn_stats\..*\.mean' has non-finite values"),
    (_negative_var, r"bn_stats\..*\.var' has non-finite or negative values"),
    (_missing_layer, r"field 'bn_stats\..*' is missing"),
    (_nan_resources, r"subnets\[0\]\.resources\.flops' must be a finite number"),
    (_huge_resolution, r"subnets\[1\]\.subnet': resolution 1000000 is not in the space"),
    (_float_resolution, r"subnets\[1\]\.subnet'.*must be an integer"),
    (_accuracy_over_100, r"subnets\[0\]\.test_acc' must be in \[0, 100\]"),
    (_string_config, r"model_config: field 'num_classes' must be an integer"),
    (_subnets_not_a_list, r"'subnets' must be a list"),
    (_unknown_resource, r"unknown kind 'watts'"),
]


@pytest.fixture(scope="module")
def good_bundle():
    return valid_bundle()


def test_a_valid_handmade_bundle_loads(good_bundle, tmp_path):
    save_bundle(good_bundle, tmp_path / "adaptive.pt")
    adaptive = AdaptiveNet.load(tmp_path / "adaptive.pt")
    assert [r.subnet for r in adaptive.subnets] == [Subnet.from_dict(e["subnet"]) for e in good_bundle["subnets"]]


@pytest.mark.parametrize("damage, field", BUNDLE_FAULTS, ids=[f.__name__ for f, _ in BUNDLE_FAULTS])
def test_a_damaged_bundle_names_the_file_and_the_field(good_bundle, damage, field, tmp_path):
    import copy

    bundle = copy.deepcopy(good_bundle)
    damage(bundle)
    path = tmp_path / "adaptive.pt"
    save_bundle(bundle, path)
    with pytest.raises(UserError, match=field) as info:
        AdaptiveNet.load(path)
    assert str(path) in str(info.value) and "re-run pssnet eval" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bundle_of_the_retired_9_width_mobilenet_v2_says_so(good_bundle, tmp_path):
    import copy

    bundle = copy.deepcopy(good_bundle)  # as written before the final conv was fixed at 1280 channels:
    del bundle["model_config"]["layout_version"]  # no layout version, and a 9th multiplier per subnet
    for entry in bundle["subnets"]:
        entry["subnet"]["widths"] = list(entry["subnet"]["widths"]) + [1.0]
    path = tmp_path / "adaptive.pt"
    save_bundle(bundle, path)
    with pytest.raises(UserError, match="trained with the older 9-width MobileNetV2 space") as info:
        AdaptiveNet.load(path)
    assert "damaged" not in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- latency tables


def valid_table() -> dict:
    return {"format": LUT_FORMAT, "device": {"type": "cpu"}, "arch": "mobilenet_v2", "small_input": True,
            "num_classes": 4, "in_chans": 1, "resolutions": [12, 20, 4], "width_range": [0.75, 1.0],
            "batch": 1, "settings": {}, "complete": True, "overhead_ms": -0.01, "entries": {"conv|a": 0.5}}


TABLE_FAULTS = [
    ("entries", [["conv|a", 0.5]], "'entries' must be a mapping"),
    ("entries", {"conv|a": -0.5}, r"entries\['conv\|a'\]' must be >= 0"),
    ("entries", {"conv|a": math.nan}, r"entries\['conv\|a'\]' must be a finite number"),
    ("entries", {"conv|a": "fast"}, r"entries\['conv\|a'\]' must be a number"),
    ("batch", 0, "'batch' must be a positive integer"),
    ("overhead_ms", math.inf, "'overhead_ms' must be a finite number"),
    ("resolutions", [12, 20], "'resolutions' must have 3 items"),
    ("width_range", [0.75, math.nan], r"width_range\[1\]' must be a finite number"),
    ("device", {"type": "tpu"}, "'device.type' must be one of"),
    ("num_classes", "4", "'num_classes' must be an integer"),
]


def test_a_valid_table_loads(tmp_path):
    path = tmp_path / "lut.json"
    path.write_text(json.dumps(valid_table()))
    table = LatencyTable.load(path)
    assert table.entries == {"conv|a": 0.5} and table.overhead_ms == -0.01


@pytest.mark.parametrize("key, value, field", TABLE_FAULTS, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(TABLE_FAULTS)])
def test_a_damaged_table_names_the_file_and_the_field(key, value, field, tmp_path):
    path = tmp_path / "lut.json"
    path.write_text(json.dumps({**valid_table(), key: value}))  # json writes NaN and Infinity
    with pytest.raises(UserError, match=field) as info:
        LatencyTable.load(path)
    assert str(path) in str(info.value) and "rebuild it with pssnet lut build" in str(info.value)


def test_a_table_without_a_field_names_it(tmp_path):
    data = valid_table()
    del data["entries"]
    with pytest.raises(UserError, match="field 'entries' is missing"):
        LatencyTable.from_dict(data, source="x.json")


# ---------------------------------------------------------------- runs


def test_a_run_whose_only_checkpoint_is_truncated_says_it_is_damaged(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000010.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError, match=r"checkpoint \(ckpt-000000010.pt\) is damaged"):
        load_run(tmp_path)
    (tmp_path / "checkpoints" / "ckpt-000000010.pt").unlink()
    with pytest.raises(UserError, match="neither final.pt nor checkpoints"):
        load_run(tmp_path)
