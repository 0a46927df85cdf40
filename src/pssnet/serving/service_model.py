"""The service-time model of adaptive serving: how long a batch on a subnet keeps the server busy.

What the controller knows of each retained subnet before serving (:class:`SubnetProfile`: its
accuracy and prior cost) and, learnt while serving, one model for all subnets
(:class:`ServiceModel`). A batch of ``b`` requests on subnet ``k`` occupies the server for

    slowdown x (base_k(b) + b x overhead)

- ``base_k(b)``: the forward pass alone on a quiet machine (the bundle's prior: latency table
  or FLOPs; replaced by the server's start-up measurements).
- ``overhead``: the CPU time per request that the server spends outside forward passes (HTTP
  parsing, decoding, batching, answering), measured online by the worker as the process's CPU
  time minus the forward passes' CPU time, per request, over the last ``error_window`` batches.
  It is the same for every subnet, so it weighs most on the cheap ones: without it, the
  share of a batch's time that is HTTP work would be read as a slow-down of the forward pass
  and charged again, multiplied, to the expensive subnets.
- ``slowdown``: one shared factor, an EWMA of each forward pass's observed time over its base
  time (of the median of the last three such ratios, so that one odd batch does not move it).
  Where the worker reports CPU times it is corrected for the HTTP work done by other threads
  during the pass (that is already in ``overhead``): observed = the pass's own CPU time divided
  by the share of the core the process got meanwhile. Interference seen on one subnet thus
  moves the estimates of all.

The target quantile enters through the recent prediction errors: predictions are stretched by
the errors' quantile (:meth:`ServiceModel.stretch`) before they are compared with the target.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from .config import SloConfig

# Prior scale without a latency table: ms per MFLOP for one image (a CPU-sized guess; the
# start-up measurements and the slow-down factor replace it).
PRIOR_MS_PER_MFLOP = 0.5


@dataclass(frozen=True)
class SubnetProfile:
    """What the controller knows of a retained subnet before serving."""

    key: str
    accuracy: float  # held-out accuracy; higher is better
    cost: float  # prior service time of a batch of one, ms
    flops: float


def subnet_profiles(subnets: Sequence[Any], kinds: Sequence[str] = ()) -> list[SubnetProfile]:
    """Profiles of retained subnets (``AdaptiveNet.subnets``). The prior is the latency table's
    prediction when the bundle has ``latency_cpu`` values (``kinds``), else proportional to FLOPs."""
    use_table = "latency_cpu" in kinds
    profiles = []
    for r in subnets:
        flops = float(r.resources.get("flops", 0.0))
        cost = float(r.resources["latency_cpu"]) if use_table else flops * PRIOR_MS_PER_MFLOP
        accuracy = r.holdout_acc if r.holdout_acc is not None else (r.test_acc or 0.0)
        profiles.append(SubnetProfile(r.key, float(accuracy), max(cost, 1e-6), flops))
    return profiles


class ServiceModel:
    """Predicted service time per subnet and batch size: base time x one shared slow-down factor."""

    def __init__(self, profiles: Sequence[SubnetProfile], config: SloConfig) -> None:
        self._prior = {p.key: p.cost for p in profiles}
        self._shape = config.batch_shape
        self._smoothing = config.smoothing
        self._quantile = config.quantile
        self._measured: dict[str, dict[int, float]] = {}
        # base_ms per (key, batch): it changes only with calibration, and the controller asks for
        # every batch size of every candidate before each batch.
        self._base_cache: dict[tuple[str, int], float] = {}
        self._errors: deque[float] = deque(maxlen=config.error_window)
        self._overhead: deque[tuple[float, int]] = deque(maxlen=config.error_window)
        self._ratios: deque[float] = deque(maxlen=3)
        self.slowdown = 1.0
        self.overhead_ms = 0.0  # per request, outside forward passes (0 until measured)

    def prior_ms(self, key: str, batch: int) -> float:
        return self._prior[key] * (self._shape + batch) / (self._shape + 1)

    def calibrate(self, key: str, batch: int, ms: float) -> None:
        """Record a measured base time (at start-up, the load the slow-down factor is relative to)."""
        if key not in self._prior:
            raise KeyError(f"no subnet {key} in the service model")
        self._measured.setdefault(key, {})[int(batch)] = float(ms)
        self._base_cache.clear()

    def _interpolated_ms(self, key: str, batch: int) -> float:
        points = self._measured[key]
        sizes = sorted(points)
        i = bisect.bisect_left(sizes, batch)
        if i < len(sizes) and sizes[i] == batch:
            return points[batch]
        if 0 < i < len(sizes):
            lo, hi = sizes[i - 1], sizes[i]
            return points[lo] + (points[hi] - points[lo]) * (batch - lo) / (hi - lo)
        nearest = sizes[0] if i == 0 else sizes[-1]
        return points[nearest] * self.prior_ms(key, batch) / self.prior_ms(key, nearest)

    def run_size(self, key: str, batch: int) -> int:
        """The size to run a batch of ``batch`` at: a larger measured size where that was measured
        faster than ``batch`` is predicted (kernels change with the batch size: on some CPUs a
        batch of 16 runs in half the time of 15), else ``batch`` itself. The worker pads to it."""
        points = self._measured.get(key)
        if not points:
            return batch
        best, best_ms = batch, self._interpolated_ms(key, batch)
        for size, ms in sorted(points.items()):
            if size > batch and ms < best_ms:
                best, best_ms = size, ms
        return best

    def base_ms(self, key: str, batch: int) -> float:
        """Service time without slow-down, run at :meth:`run_size`: measured points interpolated in
        the batch size (beyond them, scaled like the prior); unmeasured subnets: prior x the
        measured/prior median."""
        cached = self._base_cache.get((key, batch))
        if cached is None:
            cached = self._base_cache[(key, batch)] = self._base_ms(key, batch)
        return cached

    def _base_ms(self, key: str, batch: int) -> float:
        points = self._measured.get(key)
        if not points:
            ratios = [ms / self.prior_ms(k, b) for k, points_k in sorted(self._measured.items())
                      for b, ms in sorted(points_k.items())]
            return self.prior_ms(key, batch) * (statistics.median(ratios) if ratios else 1.0)
        size = self.run_size(key, batch)
        return points[size] if size != batch else self._interpolated_ms(key, batch)

    def predict_ms(self, key: str, batch: int) -> float:
        """Predicted time the server is busy with a batch: its forward pass and its requests' other work."""
        return self.slowdown * (self.base_ms(key, batch) + batch * self.overhead_ms)

    def cost_per_request(self, key: str, batch: int) -> float:
        """Base time per request of ``key`` at ``batch``, overhead included (for ranking by cost)."""
        return self.base_ms(key, batch) / batch + self.overhead_ms

    def stretch(self) -> float:
        """The target quantile of recent observed/predicted ratios (at least 1)."""
        if not self._errors:
            return 1.0
        ordered = sorted(self._errors)
        return max(1.0, ordered[max(0, math.ceil(self._quantile * len(ordered)) - 1)])

    def observe(self, key: str, batch: int, ms: float, cpu: Optional[tuple[float, float]] = None) -> None:
        """A forward pass of ``batch`` on ``key`` took ``ms``. ``cpu``: the pass's own CPU ms and the
        whole process's CPU ms meanwhile; then the pass's time without other threads' work,
        ``own / (process / ms)``, is what counts (their work is in ``overhead_ms``)."""
        if cpu is not None and cpu[1] > 0:
            own, process = cpu
            ms = own * ms / process
        base = self.base_ms(key, batch)
        self._errors.append(ms / (self.slowdown * base))
        # The EWMA takes the median of the last three ratios: one odd batch (a kernel's first run at
        # a new size, a collection pause) does not move it; a lasting change does, one batch later.
        self._ratios.append(ms / base)
        self.slowdown += self._smoothing * (statistics.median(self._ratios) - self.slowdown)

    def observe_overhead(self, cpu_ms: float, requests: int) -> None:
        """``cpu_ms`` of process CPU time outside forward passes went to ``requests`` requests."""
        if requests <= 0:
            return
        self._overhead.append((max(0.0, float(cpu_ms)), int(requests)))
        self.overhead_ms = sum(ms for ms, _ in self._overhead) / sum(n for _, n in self._overhead)
