import numpy as np
import pytest

from pssnet import count_flops, count_params, create_supernet
from pssnet.constraints import Constraint
from pssnet.resources import ResourceMeter
from pssnet.sampling import build_space_map, map_cache_key


@pytest.fixture(scope="module")
def net():
    return create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)


def test_conditional_draws_land_in_bucket(net):
    c = Constraint.parse("flops:11:24:1")
    meter = ResourceMeter(net)
    space_map = build_space_map(net.space, c, meter, samples=30_000, seed=0)
    rng = np.random.default_rng(0)
    assert space_map.unreachable_targets == ()
    for index, target in enumerate(c.targets):
        for _ in range(5):
            s = space_map.draw(index, meter, rng)
            net.space.validate(s)
            assert c.bucket_of(count_flops(net, s)) == target  # independent scalar count


def test_params_map_and_extreme_targets_observed(net):
    # Uniform multipliers almost never reach the extreme buckets; the map must still see them.
    c = Constraint.parse("params:1.3:2.2:0.05")
    meter = ResourceMeter(net)
    space_map = build_space_map(net.space, c, meter, samples=20_000, seed=3)
    lo = count_params(net, net.space.smallest()) / 1e6
    hi = count_params(net, net.space.largest()) / 1e6
    reachable = [t for t in c.targets if c.bucket_of(lo) <= t <= c.bucket_of(hi)]
    assert space_map.reachable_targets == tuple(reachable)
    rng = np.random.default_rng(1)
    for index in (0, len(c.targets) - 1):
        s = space_map.draw(index, meter, rng)
        assert c.bucket_of(count_params(net, s) / 1e6) == c.targets[index]


def test_unreachable_targets_named_once(net):
    c = Constraint.parse("flops:5:30:5")  # space spans about 10.7..23.9 MFLOPs
    space_map = build_space_map(net.space, c, ResourceMeter(net), samples=5_000, seed=0)
    assert space_map.unreachable_targets == (5.0, 30.0)
    message = space_map.unreachable_message()
    assert "5, 30" in message and "2 of 6" in message


def test_cache_round_trip_and_key(net, tmp_path):
    c = Constraint.parse("flops:11:24:1")
    meter = ResourceMeter(net)
    first = build_space_map(net.space, c, meter, samples=4_000, seed=5, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    again = build_space_map(net.space, c, meter, samples=4_000, seed=5, cache_dir=tmp_path)
    fresh = build_space_map(net.space, c, meter, samples=4_000, seed=5)
    for name, array in first.to_arrays().items():
        assert np.array_equal(array, again.to_arrays()[name])
        assert np.array_equal(array, fresh.to_arrays()[name])
    keys = {map_cache_key(net.space, c, meter, 4_000, 5), map_cache_key(net.space, c, meter, 4_000, 6),
            map_cache_key(net.space, c, meter, 5_000, 5),
            map_cache_key(net.space, Constraint.parse("flops:11:24:0.5"), meter, 4_000, 5)}
    assert len(keys) == 4
    other = create_supernet("mobilenet_v1", num_classes=10, in_chans=1, small_input=True)
    assert map_cache_key(other.space, c, ResourceMeter(other), 4_000, 5) not in keys
