import json
import random

import numpy as np
import pytest

import pssnet
from pssnet.space import SearchSpace, Subnet, make_divisible, make_divisible_array, subnets_from_arrays


def test_make_divisible_rules():
    assert make_divisible(32 * 0.75) == 24
    assert make_divisible(3) == 8  # never below the divisor
    assert make_divisible(1280) == 1280
    for v in np.linspace(1, 3000, 20011):
        d = make_divisible(v)
        assert d % 8 == 0 and d >= 8 and d >= 0.9 * v
        assert abs(d - v) <= 8  # nearest multiple, or the next one up when rounding lost >10%


def test_make_divisible_array_matches_scalar():
    values = np.random.default_rng(0).uniform(1, 2500, 50_000)
    assert make_divisible_array(values).tolist() == [make_divisible(v) for v in values]


def test_subnet_identity_is_plain_hashable_and_round_trips():
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    space = net.space
    rng = random.Random(0)
    subnets = [space.sample(rng) for _ in range(200)]
    for s in subnets:
        text = json.dumps(s.to_dict())
        back = Subnet.from_dict(json.loads(text))
        assert back == s and hash(back) == hash(s) and back.key == s.key
        space.validate(s)
    assert len(set(subnets)) == len(subnets)
    assert space.sample(random.Random(0)) == subnets[0]  # same seed, same subnet


def test_widths_on_the_millesimal_grid():
    s = Subnet(224, (0.7504999, 1.0))
    assert s.widths == (0.75, 1.0)
    assert Subnet(224, (0.75, 1.0)) == s


def test_largest_smallest_and_sampling_ranges():
    space = SearchSpace(("a", "b", "c"), 128, 224, 8)
    assert space.largest() == Subnet(224, (1.0, 1.0, 1.0))
    assert space.smallest() == Subnet(128, (0.75, 0.75, 0.75))
    res, widths = space.sample_arrays(100_000, np.random.default_rng(1))
    assert set(res.tolist()) == set(range(128, 225, 8))
    assert widths.min() == 0.75 and widths.max() == 1.0
    assert np.allclose(widths * 1000, np.round(widths * 1000))
    s = subnets_from_arrays(res[:5], widths[:5])
    assert all(space.validate(x) for x in s)


def _end_to_inner_ratio(counts: np.ndarray) -> float:
    """Mean count of the two end values over the mean count of the inner ones."""
    return float(counts[[0, -1]].mean() / counts[1:-1].mean())


@pytest.mark.parametrize("draw", ["sample", "sample_arrays"])
def test_resolution_and_width_laws_are_the_references(draw):
    # The reference draws make_divisible(U(128, 224), 8) and float("{:.3f}".format(U(0.75, 1.0))):
    # the two end values of each law cover half an interval, so they come up half as often.
    space = SearchSpace(("a", "b", "c", "d"), 128, 224, 8)
    if draw == "sample":
        rng = random.Random(0)
        subnets = [space.sample(rng) for _ in range(100_000)]
        res = np.asarray([s.resolution for s in subnets])
        widths = np.asarray([s.widths for s in subnets])
    else:
        res, widths = space.sample_arrays(100_000, np.random.default_rng(0))
        again = space.sample_arrays(100_000, np.random.default_rng(0))
        assert np.array_equal(res, again[0]) and np.array_equal(widths, again[1])  # seeded
    res_counts = np.bincount((res - 128) // 8, minlength=13)
    width_counts = np.bincount(np.rint(widths.ravel() * 1000).astype(int) - 750, minlength=251)
    assert res_counts.size == 13 and width_counts.size == 251
    # Standard errors: about 0.01 for the resolution ratio and 0.013 for the width ratio.
    assert abs(_end_to_inner_ratio(res_counts) - 0.5) < 0.05
    assert abs(_end_to_inner_ratio(width_counts) - 0.5) < 0.06
    inner = res_counts[1:-1] / res_counts[1:-1].mean()
    assert np.abs(inner - 1).max() < 0.05  # the inner resolutions stay even


@pytest.mark.parametrize("bad, message", [
    (Subnet(130, (1.0, 1.0, 1.0)), "resolution 130"),
    (Subnet(128, (1.0, 1.0)), "has 2 widths"),
    (Subnet(128, (1.0, 0.5, 1.0)), "stage 'b'"),
    (Subnet(128, (1.0, 1.2, 1.0)), "outside"),
])
def test_validation_names_the_fault(bad, message):
    space = SearchSpace(("a", "b", "c"), 128, 224, 8)
    with pytest.raises(ValueError, match=message):
        space.validate(bad)


def test_bad_descriptions_are_rejected():
    with pytest.raises(ValueError, match="not a subnet"):
        Subnet.from_dict({"res": 3})
    with pytest.raises(ValueError, match="integer"):
        Subnet(22.5, (1.0,))
    with pytest.raises(ValueError, match="resolution range"):
        SearchSpace(("a",), 224, 128)
    with pytest.raises(ValueError, match="unknown architecture"):
        pssnet.create_supernet("vgg16")


def test_space_round_trip():
    space = SearchSpace(("a", "b"), 24, 32, 4, 0.5, 1.0)
    assert SearchSpace.from_dict(json.loads(json.dumps(space.to_dict()))) == space
