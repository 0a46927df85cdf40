"""Canonical subnets: one identity per architecture (pssnet.canonicalize)."""

import random

import numpy as np
import pytest
import torch

import pssnet
from pssnet import ARCHITECTURES, Supernet, canonicalize, count_flops, count_params, create_supernet, make_divisible
from pssnet.layout import canonical_widths
from pssnet.space import Subnet


@pytest.fixture(scope="module")
def nets():
    return {arch: create_supernet(arch, num_classes=10, in_chans=3, small_input=True).eval()
            for arch in ARCHITECTURES}


def _random_subnets(net, n, seed):
    rng = random.Random(seed)
    return [net.space.sample(rng) for _ in range(n)] + [net.space.smallest(), net.space.largest()]


def _same_channels_widths(net, subnet, rng):
    """Another multiplier per stage with the same channels (found by a scalar scan of the grid)."""
    widths = []
    for base, w in zip(net.layout.base_channels, subnet.widths):
        same = [v for v in net.space.width_grid().tolist() if make_divisible(base * v) == make_divisible(base * w)]
        widths.append(rng.choice(same))
    return Subnet(subnet.resolution, tuple(widths))


def test_exported():
    assert pssnet.canonicalize is canonicalize and "canonicalize" in pssnet.__all__


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_idempotent_smallest_and_same_network(nets, arch):
    net = nets[arch]
    grid = net.space.width_grid().tolist()
    x = torch.randn(2, 3, 32, 32)
    for i, s in enumerate(_random_subnets(net, 20, seed=1)):
        c = canonicalize(net, s)
        assert canonicalize(net, c) == c and c.resolution == s.resolution
        assert net.layout.group_channels(c.widths) == net.layout.group_channels(s.widths)
        assert count_flops(net, c) == count_flops(net, s) and count_params(net, c) == count_params(net, s)
        for base, cw in zip(net.layout.base_channels, c.widths):  # the smallest grid value with these channels
            assert cw in grid
            assert all(make_divisible(base * v) != make_divisible(base * cw) for v in grid if v < cw)
        if i < 3:  # outputs: the same network
            with torch.no_grad():
                net.set_subnet(s)
                raw = net(x)
                net.set_subnet(c)
                assert torch.equal(net(x), raw)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_equal_canonical_iff_same_channels(nets, arch):
    net = nets[arch]
    rng = random.Random(2)
    subnets = _random_subnets(net, 30, seed=3)
    pairs = [(a, b) for a, b in zip(subnets, subnets[1:])]
    pairs += [(a, _same_channels_widths(net, a, rng)) for a in subnets]  # constructed: equal channels
    pairs += [(a, Subnet(net.space.resolutions[0], a.widths)) for a in subnets]  # maybe another resolution
    equal_seen = 0
    for a, b in pairs:
        same_network = (a.resolution == b.resolution
                        and net.layout.group_channels(a.widths) == net.layout.group_channels(b.widths))
        assert (canonicalize(net, a) == canonicalize(net, b)) == same_network
        equal_seen += same_network
    assert equal_seen >= len(subnets)


def test_vectorised_form_matches_and_layout_space_form(nets):
    net = nets["mobilenet_v2"]
    subnets = _random_subnets(net, 50, seed=4)
    widths = canonical_widths(net.layout, net.space.width_grid(), np.asarray([s.widths for s in subnets]))
    for s, w in zip(subnets, widths):
        assert canonicalize(net.layout, s, net.space) == canonicalize(net, s) == Subnet(s.resolution, tuple(w))
    with pytest.raises(TypeError):
        canonicalize(net.layout, subnets[0])
    with pytest.raises(ValueError):  # not in the space
        canonicalize(net, Subnet(subnets[0].resolution, (0.5,) * net.space.num_stages))


def test_mobilenet_v2_collapses_many_multipliers(nets):
    # Stages of 16 and 24 channels are full width for every multiplier in [0.75, 1]: one value.
    net = nets["mobilenet_v2"]
    table = canonical_widths(net.layout, net.space.width_grid(), np.tile(net.space.width_grid()[:, None], (1, 8)))
    distinct = [len(np.unique(table[:, g])) for g in range(8)]
    assert distinct == [len(c) for c in net.layout.channel_choices(net.space.width_grid())]
    assert distinct[1] == distinct[2] == 1


def test_pss_pools_key_networks_not_multipliers():
    from pssnet.constraints import Constraint
    from pssnet.resources import ResourceMeter
    from pssnet.sampling import PSSSampler, build_space_map

    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    meter = ResourceMeter(net.layout)
    c = Constraint.parse("flops:11:24:1")
    sampler = PSSSampler([c], {"flops": build_space_map(net.space, c, meter, samples=5_000, seed=0)}, meter,
                         seed=0, pool_size=50)
    draw = sampler.sample(0.0)
    assert canonicalize(net, draw.subnet) == draw.subnet  # the map draws canonical subnets
    copy = _same_channels_widths(net, draw.subnet, random.Random(5))
    raw = Subnet(draw.subnet.resolution, tuple(max(w, v) for w, v in zip(copy.widths, draw.subnet.widths)))
    sampler.update(draw, -1.0)
    sampler.update(type(draw)(raw, draw.kind, draw.target, "space"), -3.0)  # the same network again
    pool = sampler.pools["flops"][draw.target]
    assert len(pool) == 1 and pool.score(draw.subnet) == pytest.approx(0.9 * -1.0 + 0.1 * -3.0)
    # A checkpoint from before canonical subnets: copies merge, the best-scored one stays.
    state = sampler.state_dict()
    key = next(iter(state["pools"]["flops"]))
    state["pools"]["flops"] = {key: [{"subnet": raw.to_dict(), "score": -0.5},
                                     {"subnet": draw.subnet.to_dict(), "score": -2.0}]}
    other = PSSSampler([c], sampler.maps, meter, seed=0, pool_size=50)
    other.load_state_dict(state)
    target = float(key)
    assert other.pools["flops"][target].entries() == [(draw.subnet, -0.5)]


@pytest.mark.slow
def test_trained_run_pools_hold_distinct_canonical_subnets(tmp_path, capsys):
    from pssnet.training import SamplerConfig, TrainConfig, Trainer, load_run

    config = TrainConfig(arch="mobilenet_v1", data="fashion-mnist-mini", out=str(tmp_path / "run"),
                         constraints=["flops:4:9:1"], resolutions=[16, 24, 8], batch_size=4, max_iters=24,
                         threads=1, progress=False,
                         sampler=SamplerConfig(map_samples=3000, map_cache=str(tmp_path / "maps"), pool_size=6))
    Trainer(config).run()
    printed = capsys.readouterr().out
    run = load_run(tmp_path / "run")
    net = Supernet(run.model_config)
    entries = [subnet for pool in run.pools["flops"].values() for subnet, _ in pool]
    assert len(entries) >= 12
    for pool in run.pools["flops"].values():
        subnets = [subnet for subnet, _ in pool]
        assert all(canonicalize(net, s) == s for s in subnets)
        networks = {(s.resolution, net.layout.group_channels(s.widths)) for s in subnets}
        assert len(networks) == len(subnets)  # pairwise distinct networks
    assert "filled with spread draws" in printed
