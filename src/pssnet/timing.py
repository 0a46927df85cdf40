"""Timing of callables on the CPU or a CUDA device.

CPU samples loop very short calls so that timer resolution averages out; CUDA samples use
events. :func:`time_calls` interleaves the calls in rounds, so that a burst of load on a shared
machine spreads over all of them instead of biasing one, and first puts the allocator in its
steady state (:func:`steady_allocator`).
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from .errors import UserError
from .options import check_bounds, option

STATISTICS = ("median", "min")
MEASURE_DEVICES = ("cpu", "cuda")
CLOCKS = ("wall", "cpu")


@dataclass(frozen=True)
class MeasureSettings:
    """How entries are measured: device, CPU threads, batch size, warm-up, repeats, rounds.

    Each entry is timed in ``rounds`` rounds that go over a chunk of entries in turn (so one
    entry's samples are spread over time), each with ``warmup`` untimed and ``repeats`` timed
    calls; the entry is the ``statistic`` (median, or min for machines shared with other load)
    of all its samples.
    """

    device: str = option("cpu", choices=MEASURE_DEVICES, help="where to measure (default cpu)")
    threads: Optional[int] = option(None, min=1, help="CPU threads while measuring (default: torch's current count)")
    batch: int = option(1, min=1, help="batch size of the timed inputs (default 1)")
    warmup: int = option(2, min=0, help="untimed calls per round (default 2)")
    repeats: int = option(5, min=1, help="timed calls per round (default 5)")
    rounds: int = option(5, min=1, help="rounds, spread over time, per entry (default 5)")
    statistic: str = option("median", choices=STATISTICS,
                            help="summary of an entry's samples: median (default), or min on a machine shared "
                                 "with other load")
    min_sample_ms: float = option(0.2, flag=None, min=0.0,
                                  help="on CPU, one timed sample loops the module at least this long")
    clock: str = option("wall", choices=CLOCKS,
                        help="wall (default): elapsed time; cpu: the measuring thread's CPU time, which leaves "
                             "out the time other processes hold the core (one thread on a shared machine)")

    def __post_init__(self) -> None:
        if self.device not in MEASURE_DEVICES:
            raise UserError(f"unknown latency device '{self.device}': use --device cpu or --device cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UserError("--device cuda but CUDA is not available here: build the table on a GPU machine "
                            "or use --device cpu")
        check_bounds(self)
        if self.statistic not in STATISTICS:
            raise UserError(f"unknown statistic '{self.statistic}': use one of {', '.join(STATISTICS)}")
        if self.clock not in CLOCKS:
            raise UserError(f"unknown clock '{self.clock}': use one of {', '.join(CLOCKS)}")
        # The CPU clock counts the calling thread only: right for one CPU thread, wrong otherwise.
        if self.clock == "cpu" and (self.device != "cpu" or self.threads != 1):
            raise UserError("--clock cpu times the calling thread: use it with --device cpu --threads 1")

    def to_dict(self) -> dict[str, Any]:
        return {"warmup": self.warmup, "repeats": self.repeats, "rounds": self.rounds,
                "statistic": self.statistic, "min_sample_ms": self.min_sample_ms, "clock": self.clock}

    def timer(self) -> Callable[[], float]:
        """The clock samples are read from, in seconds."""
        return time.thread_time if self.clock == "cpu" else time.perf_counter


def steady_allocator() -> bool:
    """Keep freed memory in this process, so that no timed call pays the kernel for fresh pages.

    glibc hands large tensors to the kernel (mmap) and returns freed heap to it (trim), by
    thresholds that move with what the process allocated before. A call whose tensors land on
    fresh pages pays a page fault per 4 KiB: on the development CPU MobileNetV2 at 224 px took
    14 ms or 19 ms end to end depending on that history. Raising both thresholds (mallopt) makes
    every timing see the steady state a serving process reaches. glibc only; False elsewhere.
    Idempotent; the process keeps its peak memory afterwards.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    # Older glibc caps the mmap threshold at 32 MiB; tensors beyond it are mapped afresh every time.
    mmap = libc.mallopt(m_mmap_threshold, 1 << 30) or libc.mallopt(m_mmap_threshold, 1 << 25)
    return bool(mmap and libc.mallopt(m_trim_threshold, 1 << 30))


def _samples_cpu(fn: Callable[[], object], settings: MeasureSettings) -> list[float]:
    clock = settings.timer()
    for _ in range(settings.warmup):
        fn()
    t0 = clock()
    fn()
    once = clock() - t0
    # Very short modules are looped per sample so that timer resolution and jitter average out.
    number = max(1, int(settings.min_sample_ms / 1e3 / max(once, 1e-7)))
    samples = []
    for _ in range(settings.repeats):
        t0 = clock()
        for _ in range(number):
            fn()
        samples.append((clock() - t0) / number * 1e3)
    return samples


def _samples_cuda(fn: Callable[[], object], settings: MeasureSettings) -> list[float]:
    for _ in range(max(settings.warmup, 1)):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(settings.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end))
    return samples


def time_calls(calls: Mapping[str, Callable[[], object]], settings: MeasureSettings,
               on_round: Callable[[int], None] | None = None) -> dict[str, list[float]]:
    """Timed samples (ms per call) of each function, gathered in rounds that go over all of them."""
    sampler = _samples_cuda if settings.device == "cuda" else _samples_cpu
    steady_allocator()
    samples: dict[str, list[float]] = {key: [] for key in calls}
    with torch.inference_mode():
        for _ in range(settings.rounds):
            for key, fn in calls.items():
                samples[key] += sampler(fn, settings)
            if on_round:
                on_round(len(calls))
    return samples


def summarize(samples: Sequence[float], statistic: str = "median") -> float:
    return min(samples) if statistic == "min" else statistics.median(samples)
