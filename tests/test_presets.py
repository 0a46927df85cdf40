"""The named presets: every one validates, and their grids train the interior targets only, as
the reference does (the sandwich rule trains the smallest and largest subnets every step)."""

import pytest

from pssnet import count_flops, create_supernet
from pssnet.constraints import Constraint
from pssnet.training import PRESETS, TrainConfig, apply_preset

# preset -> the supernet its FLOPs grid is for: (num_classes, in_chans, small_input)
FLOPS_PRESETS = {
    "mbv1-flops": (1000, 3, False), "mbv2-flops": (1000, 3, False), "r50-flops": (1000, 3, False),
    "fmnist-mbv1": (10, 1, True), "fmnist-mbv2": (10, 1, True),
    "cifar10-mbv1": (10, 3, True), "cifar10-mbv2": (10, 3, True),
}
# Kept with their end targets (published transcripts and results were made with them).
QUICK_PRESETS = {"mini-mbv2", "demo", "compare-fmnist"}


def _end_buckets(name: str) -> tuple[Constraint, float, float]:
    """The preset's FLOPs grid and the buckets of its space's smallest and largest subnets."""
    num_classes, in_chans, small_input = FLOPS_PRESETS[name]
    net = create_supernet(PRESETS[name]["arch"], num_classes, in_chans, small_input)
    grid = Constraint.parse(PRESETS[name]["constraints"][0])
    lo, hi = count_flops(net, net.space.smallest()), count_flops(net, net.space.largest())  # MFLOPs
    return grid, grid.bucket_of(lo), grid.bucket_of(hi)


def test_the_resnet50_presets_exist_as_for_the_mobilenets():
    for prefix in ("mbv1", "mbv2", "r50"):
        names = {f"{prefix}-{kind}" for kind in ("flops", "cpu", "gpu", "multi")}
        assert names <= set(PRESETS)
    assert PRESETS["r50-flops"]["arch"] == PRESETS["r50-multi"]["arch"] == "resnet50"
    assert PRESETS["r50-multi"]["needs_lut"] == ["latency_cpu", "latency_gpu"]
    assert PRESETS["r50-multi"]["constraints"][0] == PRESETS["r50-flops"]["constraints"][0]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates(name):
    config = TrainConfig(out="o", data="fashion-mnist-mini")
    needs = apply_preset(config, name)
    assert config.validate() is config and config.preset == name
    kinds = {text.split(":")[0] for text in config.constraints}
    assert set(needs) == kinds & {"latency_cpu", "latency_gpu"}


@pytest.mark.parametrize("name", sorted(FLOPS_PRESETS))
def test_flops_grids_stop_one_step_inside_the_end_buckets(name):
    grid, smallest, largest = _end_buckets(name)
    assert smallest < grid.targets[0] and grid.targets[-1] < largest
    assert grid.targets[0] == pytest.approx(smallest + grid.step)
    assert grid.targets[-1] == pytest.approx(largest - grid.step)


def test_mobilenet_grids_match_the_reference_scripts():
    # The reference's scripts/train/pss-mbv*-f.sh pass 110:570:10 and 70:300:10 and train the interior.
    assert Constraint.parse(PRESETS["mbv1-flops"]["constraints"][0]).targets == tuple(range(120, 561, 10))
    assert Constraint.parse(PRESETS["mbv2-flops"]["constraints"][0]).targets == tuple(range(80, 291, 10))


def test_latency_presets_use_interior_auto_grids():
    for name, preset in PRESETS.items():
        for text in preset["constraints"]:
            if text.startswith("latency_"):
                assert text.split(":")[1] == "interior", name


def test_quick_presets_are_the_only_ones_with_end_targets():
    flops_presets = {n for n, p in PRESETS.items() if p["constraints"][0].startswith("flops:")}
    assert flops_presets == set(FLOPS_PRESETS) | QUICK_PRESETS | {"mbv1-multi", "mbv2-multi", "r50-multi"}


def test_the_readme_lists_every_preset():
    import pathlib

    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert [name for name in PRESETS if f"`{name}`" not in readme] == []
