import math

import numpy as np
import pytest

from pssnet import count_flops, count_params, create_supernet
from pssnet.constraints import Constraint, auto_constraint, parse_constraints, target_key
from pssnet.resources import ResourceMeter
from pssnet.errors import UserError


def _reference_bucket(value, start, step):
    # Independent decimal arithmetic: nearest grid point, ties up.
    from decimal import ROUND_FLOOR, Decimal

    v, s, st = Decimal(str(value)), Decimal(str(start)), Decimal(str(step))
    offset = s % st
    q = ((v - offset) / st + Decimal("0.5")).to_integral_value(rounding=ROUND_FLOOR)
    return float(q * st + offset)


def test_parse_and_targets():
    c = Constraint.parse("flops:110:570:10")
    assert (c.kind, c.start, c.stop, c.step) == ("flops", 110.0, 570.0, 10.0)
    assert c.targets[0] == 110.0 and c.targets[-1] == 570.0 and len(c.targets) == 47
    assert Constraint.parse("params:1.5:3:0.25").targets == (1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0)
    assert Constraint.from_dict(c.to_dict()) == c
    assert target_key(120) == "120.0"


@pytest.mark.parametrize("text", ["flops:1:2", "flops:a:2:1", "watts:1:2:1", "flops:5:1:1", "flops:1:5:0"])
def test_parse_rejects_bad_text(text):
    with pytest.raises(UserError):
        Constraint.parse(text)


def test_bucket_ties_round_up_and_offset():
    c = Constraint("flops", 110, 570, 10)
    assert c.bucket_of(115.0) == 120.0  # tie goes up
    assert c.bucket_of(125.0) == 130.0  # never to even
    assert c.bucket_of(114.999) == 110.0
    assert c.bucket_of(104.9) == 100.0  # below the grid: bucket exists but is not a target
    assert c.target_index(104.9) == -1 and c.target_index(115) == 1
    odd = Constraint("flops", 13, 40, 5)  # offset 3: grid 13, 18, 23, ...
    assert odd.offset == 3.0
    assert odd.bucket_of(15.5) == 18.0 and odd.bucket_of(15.49) == 13.0
    fine = Constraint("latency_cpu", 0.3, 2.0, 0.1)
    assert fine.bucket_of(0.35) == 0.4 and fine.bucket_of(0.45) == 0.5


def test_bucket_vectorised_matches_scalar_and_reference():
    rng = np.random.default_rng(0)
    for start, step in [(110, 10), (13, 5), (0.3, 0.1), (1.5, 0.25)]:
        c = Constraint("flops", start, start + 40 * step, step)
        values = np.round(rng.uniform(start - step, start + 41 * step, 300), 3)
        values[:20] = [start + (k + 0.5) * step for k in range(20)]  # exact ties
        vec = c.bucket_of(values)
        assert [c.bucket_of(float(v)) for v in values] == vec.tolist()
        assert vec.tolist() == [pytest.approx(_reference_bucket(v, start, step), abs=1e-9) for v in values]


def test_meter_matches_counters_and_needs_tables():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    meter = ResourceMeter(net.layout)
    rng = np.random.default_rng(1)
    res, widths = net.space.sample_arrays(5, rng)
    from pssnet.space import subnets_from_arrays

    subnets = subnets_from_arrays(res, widths)
    assert meter.measure_arrays("flops", res, widths) == pytest.approx([count_flops(net, s) for s in subnets])
    assert meter.measure("params", subnets[0]) == pytest.approx(count_params(net, subnets[0]) / 1e6)
    assert set(meter.measure_all(subnets[0])) == {"flops", "params"}
    with pytest.raises(UserError, match="--lut"):
        meter.measure("latency_cpu", subnets[0])


def test_auto_constraint_spans_space_and_duplicates_rejected():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    meter = ResourceMeter(net.layout)
    c = auto_constraint("flops", meter, net.space, count=20)
    lo, hi = count_flops(net, net.space.smallest()), count_flops(net, net.space.largest())
    assert c.targets[0] == c.bucket_of(lo) and c.targets[-1] == c.bucket_of(hi)
    assert 10 <= len(c.targets) <= 30
    assert parse_constraints(["flops:auto:20"], meter, net.space)[0] == c
    with pytest.raises(UserError, match="more than once"):
        parse_constraints(["flops:1:2:1", "flops:3:4:1"])
    assert math.isclose(parse_constraints(["params:1:2:0.5"])[0].step, 0.5)


@pytest.mark.parametrize("count", [5, 20, 40])
def test_interior_auto_grid_drops_the_end_buckets(count):
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    meter = ResourceMeter(net.layout)
    full = auto_constraint("flops", meter, net.space, count=count)
    inner = parse_constraints([f"flops:interior:{count}"], meter, net.space)[0]
    assert inner == auto_constraint("flops", meter, net.space, count=count, interior=True)
    lo, hi = count_flops(net, net.space.smallest()), count_flops(net, net.space.largest())
    ends = {_reference_bucket(lo, full.start, full.step), _reference_bucket(hi, full.start, full.step)}
    assert inner.step == full.step and inner.targets == full.targets[1:-1]
    assert not ends & set(inner.targets) and ends <= set(full.targets)


def test_interior_auto_grid_without_interior_targets_is_a_user_error():
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    with pytest.raises(UserError, match="no target between the smallest and largest"):
        parse_constraints(["flops:interior:2"], ResourceMeter(net.layout), net.space)
    with pytest.raises(UserError, match="write TYPE:interior:COUNT with an integer COUNT from 2"):
        parse_constraints(["flops:interior:x"], ResourceMeter(net.layout), net.space)
    with pytest.raises(UserError, match="needs a model"):
        parse_constraints(["flops:interior"])
