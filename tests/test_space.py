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
