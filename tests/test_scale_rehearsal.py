"""A scale rehearsal on the CPU: the paper's ImageNet presets end to end on a tiny generated
ImageNet-style folder of 256 x 320 JPEGs (the 1M-subnet space map of the paper's space, the real
augmentation, resize to the active resolution, evaluation at 224 px and the bundle)."""

import json

import numpy as np
import pytest
from PIL import Image

from pssnet import canonicalize
from pssnet.cli import main
from pssnet.deploy.bundle import load_bundle, unpack_bundle

pytestmark = pytest.mark.slow  # 5 to 15 s per preset on one thread (the 1M-subnet map included)

CLASSES = ("n01", "n02", "n03")


def _imagenet_folder(root, per_class: dict[str, int]) -> None:
    """``train/`` and ``val/`` class folders of smooth random 320 x 256 JPEGs (larger than 224 px)."""
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, cls in enumerate(CLASSES):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                coarse = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
                coarse[..., label] = 255 - 40 * i  # a class colour, so images are not pure noise
                image = Image.fromarray(coarse).resize((320, 256), Image.BILINEAR)
                image.save(root / split / cls / f"{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    _imagenet_folder(root, {"train": 4, "val": 2})
    return root


@pytest.mark.parametrize("preset, arch, grid, targets", [
    ("mbv2-flops", "mobilenet_v2", "flops:80:290:10", 22),
    ("mbv1-flops", "mobilenet_v1", "flops:120:560:10", 45),
    ("r50-flops", "resnet50", "flops:900:4000:100", 32),
])
def test_imagenet_preset_trains_and_evaluates_end_to_end(folder, tmp_path, capsys, preset, arch, grid, targets):
    out = tmp_path / "run"
    assert main(["train", "--preset", preset, "--data", f"folder:{folder}", "--out", str(out),
                 "--batch-size", "2", "--max-iters", "2", "--threads", "1", "--num-workers", "0",
                 "--map-cache", str(tmp_path / "maps"), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    # The data line: 224 px with the reference's ImageNet augmentation; the run line: batches and grid.
    assert "224 px" in printed
    assert (f"training {arch} (preset {preset}) with pss: batch 2 per process x 1 process = global batch 2, "
            f"lr {0.3 * 2 / 1024:.4g}; {grid} ({targets} targets)") in printed
    config = json.loads((out / "config.json").read_text())
    assert config["sampler"]["map_samples"] == 1_000_000  # the paper's map, built here
    assert (config["resolved"]["global_batch"], config["resolved"]["iterations"]) == (2, 2)
    assert config["resolved"]["model_config"]["resolutions"] == [128, 224, 8]

    assert main(["eval", str(out), "--top-k", "1", "--calib-batches", "1", "--batch-size", "2"]) == 0
    result = json.loads((out / "eval.json").read_text())
    bundle = unpack_bundle(load_bundle(out / "adaptive.pt"), "adaptive.pt")
    assert bundle.net.layout.name == arch and bundle.info["image_size"] == 224
    kept = {s.subnet for s in bundle.subnets}  # canonical forms
    space = bundle.net.space
    assert {canonicalize(bundle.net, space.largest()), canonicalize(bundle.net, space.smallest())} < kept
    budgets = [b for b in result["budgets"] if b.get("kind") == "flops"]
    assert budgets and all(len(b["candidates"]) == 1 for b in budgets)  # one candidate per budget
    assert result["extremes"]["largest"]["subnet"]["resolution"] == 224 and result["settings"]["test"] == 6
