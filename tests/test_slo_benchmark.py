"""The pure parts of ``benchmarks/slo.py``: its arrival trace, rate choice and p95 (the load
test itself runs for minutes and needs a quiet machine, so it is run by hand)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import slo  # noqa: E402


def test_the_arrival_trace_is_seeded_poisson_and_bounded():
    trace = slo.poisson_trace(200.0, 30.0, seed=3)
    assert trace == slo.poisson_trace(200.0, 30.0, seed=3) != slo.poisson_trace(200.0, 30.0, seed=4)
    assert trace == sorted(trace) and 0 < trace[0] and trace[-1] < 30.0
    assert len(trace) == pytest.approx(200 * 30, rel=0.05)  # 6000 +- 77 (one sd): 5 % is 4 sd
    assert len(slo.poisson_trace(1e6, 1.0, seed=0)) == slo.MAX_REQUESTS


def test_the_rate_is_moved_into_the_window_where_only_the_largest_is_overloaded():
    # 0.6 x 500 = 300 lies above 1.1 x 250 and below 0.6 x 550: kept
    assert slo.pick_rate(500, 250, 550, 0.6) == pytest.approx(300)
    # below 1.1 x the largest's throughput with interference: raised to it
    assert slo.pick_rate(500, 290, 550, 0.6) == pytest.approx(319)
    # above 0.6 x the smallest's with interference: lowered to it
    assert slo.pick_rate(500, 200, 450, 0.6) == pytest.approx(270)
    # never above 0.7 x the largest's throughput
    assert slo.pick_rate(500, 200, 1000, 0.9) == pytest.approx(350)
    # no window (the smallest is barely faster): the geometric middle of 1.1 x 300 and 0.6 x 320,
    # and the benchmark warns
    assert slo.pick_rate(500, 300, 320, 0.6) == pytest.approx((330 * 192) ** 0.5)
    # a window missed by a hair (as on the development machine): its middle, not the load
    assert slo.pick_rate(656, 328, 600, 0.6) == pytest.approx((360.8 * 360) ** 0.5)


def test_a_timed_out_request_counts_as_the_timeout_in_the_p95():
    latencies = [10.0] * 90 + [float("inf")] * 10
    assert slo.p95_ms(latencies) == pytest.approx(1e3 * slo.REQUEST_TIMEOUT_S)
    assert slo.p95_ms([float(i) for i in range(1, 101)]) == pytest.approx(95.05)


def test_the_mixed_trace_draws_seeded_classes_and_scores_each_against_its_own_deadline():
    classes = slo.mixed_classes(3000, seed=1)
    assert classes == slo.mixed_classes(3000, seed=1) != slo.mixed_classes(3000, seed=2)
    for name, _ in slo.DEADLINE_CLASSES:
        assert classes.count(name) == pytest.approx(1000, rel=0.1)  # a third each (sd 26: 10 % is 4 sd)
    arrivals = [0.1, 0.2, 0.3, 0.4, 0.5]
    classes = ["tight", "loose", "tight", "loose", "tight"]
    deadlines = {"tight": 10.0, "loose": 100.0}
    results = [slo.Result(0.1, 9.0, "small"), slo.Result(0.2, 90.0, "large"), slo.Result(0.3, 11.0, "small"),
               slo.Result(0.4, float("inf"))]  # 0.5 was never answered: a miss, as a failure is
    summary = slo.class_summary(results, arrivals, classes, deadlines, {"small": 70.0, "large": 80.0})
    assert summary["tight"] == {"attainment": pytest.approx(1 / 3), "accuracy": 70.0, "requests": 3}
    assert summary["loose"] == {"attainment": 0.5, "accuracy": 80.0, "requests": 2}


def test_the_closed_loop_summary_counts_failures_as_the_timeout():
    results = [slo.Result(0.0, float(ms), "s") for ms in range(1, 100)] + [slo.Result(0.0, float("inf"))]
    summary = slo.latency_summary(results, seconds=2.0, target_ms=50.0)
    assert summary["rps"] == 50.0 and summary["attainment"] == pytest.approx(50 / 100)
    assert summary["p50_ms"] == pytest.approx(50.5) and summary["p99_ms"] > 99
    assert slo.latency_summary([], 1.0, 50.0)["rps"] == 0.0
