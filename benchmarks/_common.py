"""Shared plumbing for benchmarks: argument parsing, timing, a printed table, flat JSON."""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from typing import Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=pathlib.Path, help="write the results as one flat JSON object here")
    if extra:
        extra(parser)
    return parser.parse_args()


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[int], object]], repeats: int, warmup: int = 1,
                      sync: Callable[[], object] | None = None,
                      prime: Callable[[int], object] | None = None) -> dict[str, list[float]]:
    """Seconds of each ``fn(i)`` for repeats ``i = warmup .. warmup + repeats - 1``, in alternation.

    Every function gets the same index in a round, so all can work on the same input; warm-up
    rounds use indices ``0 .. warmup - 1``. ``sync`` (e.g. ``torch.cuda.synchronize``) runs
    before the clock is read, so asynchronous work is counted where it was queued. The order
    rotates from round to round, so no function always runs first (or right after another).
    ``prime(i)``, if given, runs untimed before round ``i``: the first call on a new input can
    pay one-off costs (on a GPU, cuDNN plans for new shapes) that would otherwise fall on
    whichever function runs first.
    """
    wait = sync or (lambda: None)
    names = list(fns)
    for i in range(warmup):
        for fn in fns.values():
            fn(i)
    wait()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r, i in enumerate(range(warmup, warmup + repeats)):
        if prime is not None:
            prime(i)
            wait()
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name](i)
            wait()
            times[name].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in alternation so that machine noise hits all alike."""
    times = interleaved_times({name: (lambda i, fn=fn: fn()) for name, fn in fns.items()}, repeats, warmup)
    return {name: statistics.median(ts) for name, ts in times.items()}


def report(title: str, rows: list[tuple[str, str, str]], results: dict, json_path: pathlib.Path | None) -> None:
    """Print a (metric, value, target) table and write ``results`` as flat JSON."""
    width = max(len(r[0]) for r in rows)
    print(title)
    print(f"{'metric':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {json_path}")
