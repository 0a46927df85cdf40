import numpy as np
import pytest

from pssnet import canonicalize, count_flops, count_params, create_supernet
from pssnet.constraints import Constraint
from pssnet.layout import canonical_widths
from pssnet.resources import ResourceMeter
from pssnet.sampling import build_space_map, map_cache_key
from pssnet.sampling.space_map import THIN_BUCKET
from pssnet.space import Subnet


@pytest.fixture(scope="module")
def net():
    return create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)


def test_conditional_draws_land_in_bucket(net):
    c = Constraint.parse("flops:11:24:1")
    meter = ResourceMeter(net.layout)
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
    c = Constraint.parse("params:1.35:2.25:0.05")
    meter = ResourceMeter(net.layout)
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
    c = Constraint.parse("flops:5:30:5")  # space spans about 11.0..23.9 MFLOPs
    space_map = build_space_map(net.space, c, ResourceMeter(net.layout), samples=5_000, seed=0)
    assert space_map.unreachable_targets == (5.0, 30.0)
    message = space_map.unreachable_message()
    assert "5, 30" in message and "2 of 6" in message


def test_cache_round_trip_and_key(net, tmp_path):
    c = Constraint.parse("flops:11:24:1")
    meter = ResourceMeter(net.layout)
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
    assert map_cache_key(other.space, c, ResourceMeter(other.layout), 4_000, 5) not in keys


@pytest.fixture(scope="module")
def imagenet_v2_map():
    net = create_supernet("mobilenet_v2")
    meter = ResourceMeter(net.layout)
    c = Constraint.parse("flops:80:290:10")
    return net, meter, c, build_space_map(net.space, c, meter, samples=200_000, seed=0)


@pytest.mark.slow
def test_middle_bucket_draws_like_uniform_rejection(imagenet_v2_map):
    # The paper's distribution: a middle bucket's conditional draws match uniform subnets that
    # happen to land in that bucket (rejection sampling from the uniform space).
    net, meter, c, space_map = imagenet_v2_map
    index = c.targets.index(250.0)
    assert 250.0 not in space_map.spread_filled_targets
    rng = np.random.default_rng(1)
    drawn = [space_map.draw(index, meter, rng) for _ in range(2_000)]
    assert all(canonicalize(net, s) == s for s in drawn[:200])  # draws are canonical
    res, widths = net.space.sample_arrays(400_000, np.random.default_rng(7))
    keep = c.target_index(meter.measure_arrays("flops", res, widths)) == index
    assert keep.sum() >= 2_000
    uniform_widths = canonical_widths(net.layout, net.space.width_grid(), widths[keep])
    assert abs(np.mean([s.resolution for s in drawn]) - res[keep].mean()) < 2.0
    assert abs(np.mean([s.widths for s in drawn]) - uniform_widths.mean()) < 0.01


def test_thin_extreme_bucket_is_spread_filled_and_named(imagenet_v2_map):
    net, meter, c, space_map = imagenet_v2_map
    thin = space_map.spread_filled_targets
    assert 290.0 in thin and 250.0 not in thin
    for t, n in zip(c.targets, space_map.observations):
        if t in thin:
            assert n >= THIN_BUCKET  # the spread draws topped it up
    message = space_map.spread_filled_message()
    assert "290" in message and f"{len(thin)} of {len(c.targets)} flops targets" in message
    rng = np.random.default_rng(2)
    s = space_map.draw(c.targets.index(290.0), meter, rng)
    assert c.bucket_of(count_flops(net, s)) == 290.0


def test_uniform_buckets_count_uniform_draws_only(net):
    # Every bucket that uniform draws fill keeps exactly the uniform draws' counts: no spread
    # draw is mixed in. Independent truth: the same uniform stream measured with scalar counts.
    c = Constraint.parse("flops:11:24:1")
    meter = ResourceMeter(net.layout)
    space_map = build_space_map(net.space, c, meter, samples=6_000, seed=4)
    assert space_map.spread_filled.dtype == bool and space_map.spread_filled.shape == (len(c.targets),)
    assert space_map.spread_filled_targets  # the extremes are thin with 6,000 draws
    rng = np.random.Generator(np.random.PCG64([4, 0x5EAC]))  # the map's own generator
    res, widths = net.space.sample_arrays(6_000, rng)
    res[:2] = [net.space.resolutions[0], net.space.resolutions[-1]]
    widths[:2] = [net.space.smallest().widths, net.space.largest().widths]
    buckets = [c.bucket_of(count_flops(net, Subnet(int(r), tuple(w)))) for r, w in zip(res, widths.tolist())]
    for index, t in enumerate(c.targets):
        expected = sum(b == t for b in buckets)
        if t in space_map.spread_filled_targets:
            assert expected < THIN_BUCKET < space_map.observations[index]
        else:
            assert space_map.observations[index] == expected


def test_a_cached_map_of_an_older_version_is_rebuilt_not_reused(net, tmp_path):
    import json

    from pssnet.sampling.space_map import MAP_VERSION

    c = Constraint.parse("flops:11:24:1")
    meter = ResourceMeter(net.layout)
    first = build_space_map(net.space, c, meter, samples=3_000, seed=2, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.npz")
    with np.load(path, allow_pickle=False) as stored:
        arrays = dict(stored)
    meta = json.loads(str(arrays["meta"]))
    arrays["meta"] = np.asarray(json.dumps({**meta, "version": MAP_VERSION - 1}))
    arrays["res_counts"] = np.zeros_like(arrays["res_counts"])  # what an older map would hold instead
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    again = build_space_map(net.space, c, meter, samples=3_000, seed=2, cache_dir=tmp_path)
    assert np.array_equal(again.res_counts, first.res_counts) and again.res_counts.sum() > 0
    with np.load(path, allow_pickle=False) as rewritten:
        assert json.loads(str(rewritten["meta"]))["version"] == MAP_VERSION == 3
