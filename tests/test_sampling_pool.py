import numpy as np
import pytest

from pssnet import create_supernet
from pssnet.constraints import Constraint
from pssnet.resources import ResourceMeter
from pssnet.sampling import PSSSampler, SubnetPool, UniformSampler, build_space_map, exp_schedule
from pssnet.space import Subnet


def _subnet(i: int) -> Subnet:
    return Subnet(32, (0.75 + i / 1000,))


def test_pool_ema_and_eviction():
    pool = SubnetPool(size=3, ema=0.9)
    pool.update(_subnet(0), -1.0)
    pool.update(_subnet(0), -2.0)
    assert pool.score(_subnet(0)) == pytest.approx(0.9 * -1.0 + 0.1 * -2.0)
    pool.update(_subnet(1), -0.5)
    pool.update(_subnet(2), -3.0)
    assert len(pool) == 3 and pool.full
    pool.update(_subnet(3), -0.1)  # over size: the lowest (subnet 2) leaves
    assert _subnet(2) not in pool and len(pool) == 3
    pool.update(_subnet(4), -5.0)  # a newcomer that is the worst leaves at once
    assert _subnet(4) not in pool
    assert [s for s, _ in pool.entries()] == [_subnet(3), _subnet(1), _subnet(0)]  # best first
    restored = SubnetPool(size=3)
    restored.load_state_dict(pool.state_dict())
    assert restored.entries() == pool.entries()


def test_schedule_end_points():
    assert exp_schedule(1.0, 0.01, 0.0) == 1.0
    assert exp_schedule(1.0, 0.01, 1.0) == pytest.approx(0.01)
    assert exp_schedule(1.0, 0.01, 0.5) == pytest.approx(0.1)
    assert exp_schedule(2.0, 0.5, 0.25) == pytest.approx(2.0 * 0.25**0.25)


def test_softmax_draw_favours_high_scores_and_turns_greedy():
    pool = SubnetPool(size=4)
    scores = [-2.0, -1.5, -1.0, -0.5]
    for i, s in enumerate(scores):
        pool.update(_subnet(i), s)
    _, probs = pool.probabilities(1.0)
    expected = np.exp(scores) / np.exp(scores).sum()
    assert probs == pytest.approx(expected)
    rng = np.random.default_rng(0)
    counts = {i: 0 for i in range(4)}
    for _ in range(4000):
        counts[pool.draw(rng, 1.0).widths[0] * 1000 - 750] += 1
    freqs = np.array([counts[i] for i in range(4)]) / 4000
    assert freqs == pytest.approx(expected, abs=0.03)
    assert all(np.diff(freqs) > 0)
    greedy = [pool.draw(rng, 0.01) for _ in range(200)]
    assert all(s == _subnet(3) for s in greedy)


@pytest.fixture(scope="module")
def two_kind_setup():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    meter = ResourceMeter(net.layout)
    cons = [Constraint.parse("flops:11:24:1"), Constraint.parse("params:1.3:2.2:0.3")]
    maps = {c.kind: build_space_map(net.space, c, meter, samples=10_000, seed=0) for c in cons}
    return net, meter, cons, maps


def test_pss_sampler_fills_from_space_then_uses_pools(two_kind_setup):
    net, meter, cons, maps = two_kind_setup
    sampler = PSSSampler(cons, maps, meter, seed=0, pool_size=2)
    n_flops, n_params = (len(maps[k].reachable_targets) for k in ("flops", "params"))
    kinds, sources = [], []
    for _ in range(300):
        draw = sampler.sample(progress=1.0)  # p(1) = 0.01: the pool once it is full
        pool = sampler.pools[draw.kind][draw.target]
        if not pool.full:  # pools under pool_size always draw from the space
            assert draw.source == "space"
        if draw.source == "pool":
            assert draw.subnet in pool
        c = maps[draw.kind].constraint
        assert c.bucket_of(meter.measure(draw.kind, draw.subnet)) == draw.target
        sampler.update(draw, -float(sum(draw.subnet.widths)))
        kinds.append(draw.kind)
        sources.append(draw.source)
    assert sources.count("pool") > 200
    # Constraint type chosen in proportion to its number of pools.
    assert kinds.count("flops") / len(kinds) == pytest.approx(n_flops / (n_flops + n_params), abs=0.08)
    assert sampler.pool_fill() == 1.0


def test_sampler_state_round_trip_continues_identically(two_kind_setup):
    net, meter, cons, maps = two_kind_setup
    a = PSSSampler(cons, maps, meter, seed=7, pool_size=2)
    for i in range(40):
        d = a.sample(i / 80)
        a.update(d, -i * 0.01)
    b = PSSSampler(cons, maps, meter, seed=99, pool_size=2)
    b.load_state_dict(a.state_dict())
    for i in range(40, 80):
        da, db = a.sample(i / 80), b.sample(i / 80)
        assert da == db
        a.update(da, -i * 0.01)
        b.update(db, -i * 0.01)
    assert a.pools_state() == b.pools_state()
    u1, u2 = UniformSampler(net.space, seed=3), UniformSampler(net.space, seed=3)
    assert [u1.sample(0).subnet for _ in range(5)] == [u2.sample(0).subnet for _ in range(5)]
