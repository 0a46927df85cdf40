"""Issue 20, items 3, 7 and 15: a bundle is checked against its own model before anything is
built from it (bounded model config, every weight's shape), and what it claims is refused when
the model contradicts it (resources, non-finite weights, preprocessing). Both forms of a bundle,
``adaptive.pt`` and the Hub folder, go through the same checks."""

import copy
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pssnet
from pssnet.cli import main
from pssnet.deploy import AdaptiveNet, save_bundle, save_folder
from pssnet.deploy.bundle_checks import expected_state_shapes
from pssnet.errors import UserError
from pssnet.supernet_config import MAX_IN_CHANS, MAX_NUM_CLASSES, MAX_RESOLUTION, SupernetConfig
from test_reliability_api import valid_bundle

SRC = Path(__file__).resolve().parents[1] / "src"


def with_preprocessing(bundle: dict) -> dict:
    bundle["preprocessing"] = {"in_chans": 1, "image_size": 20, "mean": [0.5], "std": [0.25],
                               "class_names": ["a", "b", "c", "d"], "crop_ratio": None}
    return bundle


@pytest.fixture(scope="module")
def good():
    return with_preprocessing(valid_bundle())


def write(bundle: dict, form: str, tmp_path: Path) -> Path:
    """The bundle as ``adaptive.pt`` or as a Hub folder."""
    if form == "pt":
        save_bundle(bundle, tmp_path / "adaptive.pt")
        return tmp_path / "adaptive.pt"
    return save_folder(bundle, tmp_path / "adaptive")


@pytest.mark.parametrize("arch, small", [("mobilenet_v1", True), ("mobilenet_v2", False), ("resnet50", True)])
def test_expected_shapes_are_the_supernets_own(arch, small):
    config = SupernetConfig(arch, num_classes=7, in_chans=2, small_input=small)
    net = pssnet.Supernet(config)
    assert expected_state_shapes(config) == {k: tuple(v.shape) for k, v in net.state_dict().items()}


# ---------------------------------------------------------------- item 3: bounds before allocation


@pytest.mark.parametrize("field, value, message", [
    ("num_classes", MAX_NUM_CLASSES + 1, "'num_classes' must be at most 100000, got 100001"),
    ("in_chans", MAX_IN_CHANS + 1, "'in_chans' must be at most 64, got 65"),
    ("resolutions", [24, 1e9, 4], r"'resolutions\[1\]' must be at most 2048, got 1000000000"),
    ("resolutions", [24, 32, MAX_RESOLUTION + 1], r"'resolutions\[2\]' must be at most 2048, got 2049"),
    ("width_range", [0.75, 1e6], r"'width_range\[1\]' must be in \(0, 8\]"),
])
def test_model_config_fields_have_upper_bounds(field, value, message, good, tmp_path):
    bundle = copy.deepcopy(good)
    bundle["model_config"][field] = value
    with pytest.raises(UserError, match=message) as info:
        AdaptiveNet.load(write(bundle, "pt", tmp_path))
    assert "\n" not in str(info.value) and "model_config" in str(info.value)


def test_weight_shapes_are_compared_with_the_layout_before_the_model_is_built(good, tmp_path, monkeypatch):
    bundle = copy.deepcopy(good)
    bundle["model_config"]["num_classes"] = 100_000
    built = []
    monkeypatch.setattr(pssnet.deploy.bundle, "Supernet", lambda config: built.append(config))
    for form in ("pt", "folder"):
        with pytest.raises(UserError, match=r"classifier\.1\.weight.* has shape \[4, \d+\]; the model needs "
                                            r"\[100000, \d+\]"):
            AdaptiveNet.load(write(bundle, form, tmp_path / form))
    assert built == []
    bundle = copy.deepcopy(good)
    bundle["state_dict"]["features.0.body.0.conv.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(UserError, match=r"'state_dict\.features\.0\.body\.0\.conv\.weight' has shape \[1, 1, 1, 1\]"):
        AdaptiveNet.load(write(bundle, "pt", tmp_path))
    bundle["state_dict"] = dict(good["state_dict"], extra=torch.zeros(1))
    with pytest.raises(UserError, match="field 'state_dict.extra' is not a tensor of the model"):
        AdaptiveNet.load(write(bundle, "pt", tmp_path))


def _peak_rss_mb(bundle_path: Path) -> tuple[float, str]:
    """Load ``bundle_path`` in a fresh interpreter: its peak RSS (MB) and its one-line outcome."""
    code = textwrap.dedent(f"""
        import resource
        from pssnet.deploy import AdaptiveNet
        from pssnet.errors import UserError
        try:
            AdaptiveNet.load({str(bundle_path)!r})
            print("loaded")
        except UserError as exc:
            print(exc)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    """)
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outcome, peak = done.stdout.strip().splitlines()
    return float(peak), outcome


@pytest.mark.slow
def test_a_small_file_cannot_make_the_loader_allocate(good, tmp_path):
    """resolutions [24, 1e9, 4] took 10.5 GB, num_classes 200,000 1.7 GB from a 10 MB file."""
    baseline, outcome = _peak_rss_mb(write(good, "pt", tmp_path / "good"))
    assert outcome == "loaded"
    for field, value in (("resolutions", [24, 10**9, 4]), ("num_classes", MAX_NUM_CLASSES)):
        bundle = copy.deepcopy(good)
        bundle["model_config"][field] = value
        peak, outcome = _peak_rss_mb(write(bundle, "pt", tmp_path / field))
        assert "is damaged or does not match its model" in outcome, outcome
        assert peak < baseline + 256, (field, peak, baseline)  # a 100,000-class head alone is 512 MB


# ---------------------------------------------------------------- items 7 and 15: claims the model contradicts


def _set(path: str, value):
    def damage(bundle: dict) -> None:
        *parents, last = path.split("/")
        target = bundle
        for key in parents:
            target = target[int(key) if isinstance(target, list) else key]
        target[int(last) if isinstance(target, list) else last] = value
    damage.__name__ = f"{path}={value!r}"[:60]
    return damage


def _weight(value: float, dtype=torch.float32):
    def damage(bundle: dict) -> None:
        name = "features.1.body.0.conv.weight"
        weight = bundle["state_dict"][name].to(dtype).clone()
        weight.view(-1)[3] = value
        bundle["state_dict"][name] = weight
    damage.__name__ = f"weight={value}/{dtype}"
    return damage


CLAIMS = [
    (_weight(math.nan), r"state_dict\.features\.1\.body\.0\.conv\.weight' has non-finite values"),
    (_weight(math.inf), r"state_dict\.features\.1\.body\.0\.conv\.weight' has non-finite values"),
    (_weight(1e300, torch.float64), r"conv\.weight' has non-finite values"),  # inf once cast to float32
    (_set("subnets/1/resources/flops", 0.0001), r"subnets\[1\]\.resources\.flops' is 0\.0001 MFLOPs, but the "
                                                r"subnet has [\d.]+ MFLOPs; the resources do not belong"),
    (_set("subnets/0/resources/params", 50.0), r"subnets\[0\]\.resources\.params' is 50 M params, but the subnet has"),
    (_set("subnets/0/resources/latency_cpu", 0.0), r"subnets\[0\]\.resources\.latency_cpu' must be > 0"),
    (_set("preprocessing/in_chans", 3), r"'preprocessing\.in_chans' is 3, but the model takes 1 input channel"),
    (_set("preprocessing/std", [1e-300]), r"preprocessing\.std\[0\]' must be in \[0\.001, 1\]"),
    (_set("preprocessing/mean", [7.0]), r"preprocessing\.mean\[0\]' must be in \[0, 1\]"),
    (_set("preprocessing/crop_ratio", 1e-9), r"preprocessing\.crop_ratio' must be in \[0\.1, 1\]"),
    (_set("preprocessing/image_size", 1), r"preprocessing\.image_size' must be in \[8, 160\]"),
    (_set("preprocessing/image_size", 8192), r"preprocessing\.image_size' must be in \[8, 160\]"),
    (_set("image_size", 8192), r"'image_size' must be in \[8, 160\]"),
    (_set("image_size", 16), r"preprocessing\.image_size' is 20, but the bundle's image_size is 16"),
]


@pytest.mark.parametrize("form", ["pt", "folder"])
@pytest.mark.parametrize("damage, message", CLAIMS, ids=[d.__name__ for d, _ in CLAIMS])
def test_claims_the_model_contradicts_are_refused_in_both_forms(damage, message, form, good, tmp_path):
    bundle = copy.deepcopy(good)
    damage(bundle)
    path = write(bundle, form, tmp_path)
    with pytest.raises(UserError, match=message) as info:
        AdaptiveNet.load(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "re-run pssnet eval" in text


def test_the_bundle_as_made_passes_every_check_in_both_forms(good, tmp_path):
    for form in ("pt", "folder"):
        adaptive = AdaptiveNet.load(write(good, form, tmp_path / form))
        assert adaptive.info["preprocessing"]["in_chans"] == 1 and len(adaptive.subnets) == 2


def test_latency_values_are_recounted_from_the_stored_table(good, tmp_path):
    from pssnet.latency.keys import subnet_keys
    from pssnet.latency.table import LatencyTable

    config = SupernetConfig.from_dict(good["model_config"])
    layout = config.layout()
    subnets = [pssnet.Subnet.from_dict(entry["subnet"]) for entry in good["subnets"]]
    entries = {key: 0.25 for s in subnets for key in subnet_keys(layout, s)}
    table = LatencyTable(entries, {"type": "cpu", "cpu": "test cpu", "threads": 1}, config.to_dict(), overhead_ms=0.5)
    bundle = copy.deepcopy(good)
    bundle["luts"] = {"latency_cpu": table.to_dict()}
    for entry, subnet in zip(bundle["subnets"], subnets):
        entry["resources"]["latency_cpu"] = table.predict(layout, subnet)
    assert AdaptiveNet.load(write(bundle, "pt", tmp_path / "ok")).kinds == ("flops", "latency_cpu")
    bundle["subnets"][1]["resources"]["latency_cpu"] *= 3
    with pytest.raises(UserError, match=r"subnets\[1\]\.resources\.latency_cpu' is [\d.]+ ms, but the subnet has"):
        AdaptiveNet.load(write(bundle, "folder", tmp_path / "bad"))


def test_serve_refuses_a_bundle_whose_preprocessing_does_not_fit_with_one_line(good, tmp_path, capsys):
    bundle = copy.deepcopy(good)
    bundle["preprocessing"]["in_chans"] = 3
    bundle["preprocessing"]["mean"], bundle["preprocessing"]["std"] = [0.5] * 3, [0.25] * 3
    path = write(bundle, "pt", tmp_path)
    assert main(["serve", str(path), "--slo-ms", "50", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("pssnet serve: error: ")
    assert "'preprocessing.in_chans' is 3, but the model takes 1 input channel(s)" in err
