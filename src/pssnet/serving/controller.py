"""The latency controller of adaptive serving: which retained subnet runs the next batch.

Pure logic: no threads, no clock of its own (every call gets ``now_ms``), no randomness, so the
same observations always give the same decisions.

The cost model (:class:`ServiceModel`), one for all subnets. A batch of ``b`` requests on
subnet ``k`` occupies the server for

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
the errors' quantile before they are compared with the target.

Candidates: a subnet that another retained subnet matches or beats in accuracy at no more
static cost (prior: latency table or FLOPs) is dominated and never chosen (``fixed`` may pin
it). :class:`SloController` keeps a *serving* subnet: the most accurate candidate whose
predicted latency in steady state, at the measured arrival rate, meets ``margin * target``. It
starts on the least costly candidate (by the model: measured where measured), steps down when
the serving subnet has missed for ``down_batches`` batches in a row (to the least costly
candidate where none fits), and steps up only after a more accurate candidate has met the
stricter ``up_margin`` for ``up_hold_ms`` and ``up_hold_batches`` in a row. A backlog that the
serving subnet would not clear within the target (a stall, a burst) is served, batch by batch,
by the most accurate cheaper candidate that clears it, without moving the serving subnet.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError

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


@dataclass(frozen=True)
class SloConfig:
    """The latency objective and the controller's knobs (times in ms)."""

    target_ms: float
    quantile: float = 0.95
    max_batch: int = 8
    max_wait_ms: float = 5.0
    margin: float = 0.8  # plan each batch to complete within margin * target
    up_margin: float = 0.6  # a step up needs predictions within up_margin * target ...
    up_hold_ms: float = 2000.0  # ... continuously for this long
    up_hold_batches: int = 10  # ... and for this many batches
    down_batches: int = 3  # a step down needs this many batches in a row that miss in steady state
    max_utilisation: float = 0.95  # share of a subnet's capacity the arrival rate may use
    up_utilisation: float = 0.85  # the same, for stepping up
    smoothing: float = 0.3  # EWMA weight of one observation in the slow-down factor
    error_window: int = 64  # batches whose prediction errors give the quantile's stretch
    rate_window_ms: float = 2000.0  # arrivals counted for the arrival rate
    batch_shape: float = 4.0  # prior: a batch of b costs like (batch_shape + b) images

    def __post_init__(self) -> None:
        checks = [
            (self.target_ms > 0, "--slo-ms must be positive"),
            (0.5 <= self.quantile < 1.0, "--quantile must be in [0.5, 1)"),
            (self.max_batch >= 1, "--max-batch must be at least 1"),
            (self.max_wait_ms >= 0, "--max-wait-ms must be non-negative"),
            (0 < self.up_margin <= self.margin <= 1, "need 0 < up_margin <= margin <= 1"),
            (0 < self.up_utilisation <= self.max_utilisation <= 1, "need 0 < up_utilisation <= max_utilisation <= 1"),
            (0 < self.smoothing <= 1, "smoothing must be in (0, 1]"),
            (min(self.error_window, self.up_hold_batches, self.down_batches) >= 1, "windows must be at least 1"),
            (self.rate_window_ms > 0 and self.up_hold_ms >= 0 and self.batch_shape >= 0, "bad window or shape"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"{message} (got {self})")


@dataclass(frozen=True)
class Decision:
    """The subnet and size of the next batch, and the predicted completion (ms) of its oldest request."""

    key: str
    batch: int
    predicted_ms: float


class ServiceModel:
    """Predicted service time per subnet and batch size: base time x one shared slow-down factor."""

    def __init__(self, profiles: Sequence[SubnetProfile], config: SloConfig) -> None:
        self._prior = {p.key: p.cost for p in profiles}
        self._shape = config.batch_shape
        self._smoothing = config.smoothing
        self._quantile = config.quantile
        self._measured: dict[str, dict[int, float]] = {}
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


def dominated(profiles: Sequence[SubnetProfile]) -> set[str]:
    """Keys of the subnets that another one matches or beats in accuracy at no more static cost
    (of exact ties in both, the first by key stays)."""
    def beats(q: SubnetProfile, p: SubnetProfile) -> bool:
        if q.accuracy == p.accuracy and q.cost == p.cost:
            return q.key < p.key
        return q.accuracy >= p.accuracy and q.cost <= p.cost

    return {p.key for p in profiles if any(q is not p and beats(q, p) for q in profiles)}


class SloController:
    """Picks the subnet of each batch to keep ``quantile`` of latencies within ``target_ms``.

    Call :meth:`note_arrivals` with the arrival times of new requests, :meth:`choose` before each
    batch with the arrival times of all waiting requests (oldest first), and :meth:`observe`
    after it. ``fixed`` pins one subnet (the baseline; any retained one); the model still learns.
    ``ranked`` holds the candidates of adaptive serving (the subnets no other one dominates),
    most accurate first; ``profiles`` all of them.
    """

    def __init__(self, profiles: Sequence[SubnetProfile], config: SloConfig, fixed: Optional[str] = None) -> None:
        if not profiles:
            raise UserError("no subnets to serve")
        self.config = config
        self.profiles = {p.key: p for p in profiles}
        if fixed is not None and fixed not in self.profiles:
            raise UserError(f"subnet {fixed} is not retained in the bundle")
        self.dominated = dominated(profiles)
        candidates = [p for p in profiles if p.key not in self.dominated]
        self.ranked = sorted(candidates, key=lambda p: (-p.accuracy, p.cost, p.key))  # most accurate first
        self._rank = {p.key: i for i, p in enumerate(self.ranked)}
        self.model = ServiceModel(profiles, config)
        self.fixed = fixed
        self.current = fixed or self.least_costly()
        self.switches = 0
        self._chosen = False  # until the first batch, calibration may still move the start
        self._arrivals: deque[float] = deque()
        self._first_arrival: Optional[float] = None
        self._headroom_since: Optional[float] = None
        self._headroom_batches = 0
        self._misses = 0  # batches in a row whose serving subnet missed in steady state

    def least_costly(self) -> str:
        """The candidate with the least predicted time per request at ``max_batch`` (measured where
        measured, else the prior), the place to start and to fall back to."""
        size = self.config.max_batch
        return min(self.ranked, key=lambda p: (self.model.cost_per_request(p.key, size), -p.accuracy, p.key)).key

    def profile(self, key: str) -> SubnetProfile:
        return self.profiles[key]

    # -- arrival rate --------------------------------------------------------

    def note_arrivals(self, times_ms: Sequence[float]) -> None:
        for t in times_ms:
            self._arrivals.append(float(t))
            if self._first_arrival is None:
                self._first_arrival = float(t)

    def arrival_rate(self, now_ms: float) -> float:
        """Requests per ms over the last ``rate_window_ms`` (0 before any arrival)."""
        start = now_ms - self.config.rate_window_ms
        while self._arrivals and self._arrivals[0] < start:
            self._arrivals.popleft()
        if self._first_arrival is None:
            return 0.0
        span = now_ms - max(start, self._first_arrival)
        return len(self._arrivals) / max(span, self.config.rate_window_ms / 20)

    # -- prediction ----------------------------------------------------------

    def completion_ms(self, key: str, now_ms: float, waiting_ms: Sequence[float]) -> float:
        """Predicted arrival-to-completion time of the worst waiting request, served in FIFO batches."""
        batch, elapsed, worst = self.config.max_batch, 0.0, 0.0
        for start in range(0, len(waiting_ms), batch):
            elapsed += self.model.predict_ms(key, min(batch, len(waiting_ms) - start))
            worst = max(worst, now_ms - waiting_ms[start] + elapsed)
        return worst

    def steady_ms(self, key: str, rate: float, utilisation: float) -> float:
        """Predicted latency in steady state at ``rate`` (per ms); inf if it would use more than
        ``utilisation`` of the subnet's capacity. The batch is the smallest that keeps up."""
        if rate <= 0:
            return 0.0
        cfg, predict = self.config, self.model.predict_ms
        if rate * predict(key, cfg.max_batch) > utilisation * cfg.max_batch:
            return math.inf
        size = next(b for b in range(1, cfg.max_batch + 1) if rate * predict(key, b) <= b)
        return max(cfg.max_wait_ms, predict(key, size)) + predict(key, size)

    def _steady_fits(self, key: str, rate: float, up: bool) -> bool:
        """Whether ``key`` keeps the target in steady state at ``rate``: within ``margin`` of it
        (``up_margin``, and ``up_utilisation`` of capacity, for a step up), with the quantile's stretch."""
        cfg = self.config
        steady = self.steady_ms(key, rate, cfg.up_utilisation if up else cfg.max_utilisation)
        return steady * self.model.stretch() <= (cfg.up_margin if up else cfg.margin) * cfg.target_ms

    def _clears(self, key: str, now_ms: float, waiting_ms: Sequence[float], share: float = 1.0) -> bool:
        """Whether ``key`` completes the requests waiting now within ``share`` of the target."""
        return self.completion_ms(key, now_ms, waiting_ms) <= share * self.config.target_ms

    # -- decisions -----------------------------------------------------------

    def choose(self, now_ms: float, waiting_ms: Sequence[float]) -> Decision:
        """The subnet for the next batch (the first ``max_batch`` of ``waiting_ms``, oldest first)."""
        if not waiting_ms:
            raise ValueError("choose() needs at least one waiting request")
        batch = min(self.config.max_batch, len(waiting_ms))
        self._chosen = True
        key = self.current
        if self.fixed is None:
            self._step(now_ms)
            key = self._for_backlog(now_ms, waiting_ms)
        return Decision(key, batch, self.completion_ms(key, now_ms, waiting_ms[:batch]))

    def _step(self, now_ms: float) -> None:
        """Move the serving subnet by the steady state at the measured arrival rate: down when it
        has missed for ``down_batches`` batches in a row (a single stall is the backlog's business,
        :meth:`_for_backlog`), up after the headroom has lasted (hysteresis)."""
        rate = self.arrival_rate(now_ms)
        here = self._rank[self.current]
        if not self._steady_fits(self.current, rate, up=False):
            self._misses += 1
            if self._misses < self.config.down_batches:
                return
            # The most accurate less accurate candidate that fits, else the least costly one.
            fitting = [p.key for p in self.ranked[here + 1:] if self._steady_fits(p.key, rate, up=False)]
            self._switch(fitting[0] if fitting else self.least_costly())
            return
        self._misses = 0
        better = [p.key for p in self.ranked[:here] if self._steady_fits(p.key, rate, up=True)]
        if not better:
            self._headroom_since, self._headroom_batches = None, 0
            return
        if self._headroom_since is None:
            self._headroom_since = now_ms
        self._headroom_batches += 1
        if (now_ms - self._headroom_since >= self.config.up_hold_ms
                and self._headroom_batches >= self.config.up_hold_batches):
            self._switch(better[0])

    def _for_backlog(self, now_ms: float, waiting_ms: Sequence[float]) -> str:
        """The subnet of this batch: the serving one, unless the requests waiting now (a stall, a
        burst) would miss the target on it; then, for this batch only, the most accurate cheaper
        candidate that clears them in time, else the least costly one. The serving subnet stays,
        so a passing backlog costs a few batches of accuracy, not a step down and the hold
        before the step back up. Lasting interference raises the slow-down factor and moves the
        serving subnet itself (:meth:`_step`)."""
        if self._clears(self.current, now_ms, waiting_ms):
            return self.current
        cheaper = self.ranked[self._rank[self.current] + 1:]  # candidates: less accurate means cheaper
        return next((p.key for p in cheaper if self._clears(p.key, now_ms, waiting_ms)), self.least_costly())

    def _switch(self, key: str) -> None:
        self._headroom_since, self._headroom_batches, self._misses = None, 0, 0
        if key != self.current:
            self.current = key
            self.switches += 1

    def observe(self, key: str, batch: int, service_ms: float, cpu: Optional[tuple[float, float]] = None) -> None:
        """A batch of ``batch`` requests on ``key`` took ``service_ms`` (``cpu``: see :meth:`ServiceModel.observe`)."""
        self.model.observe(key, batch, service_ms, cpu)

    def observe_overhead(self, cpu_ms: float, requests: int) -> None:
        """Process CPU ms outside forward passes, spent on ``requests`` requests."""
        self.model.observe_overhead(cpu_ms, requests)

    def calibrate(self, key: str, batch: int, ms: float) -> None:
        """A start-up measurement of a forward pass; before the first batch it may move the start."""
        self.model.calibrate(key, batch, ms)
        if self.fixed is None and not self._chosen:
            self.current = self.least_costly()

    def status(self, now_ms: float) -> Mapping[str, Any]:
        return {"subnet": self.current, "fixed": self.fixed is not None, "slowdown": self.model.slowdown,
                "stretch": self.model.stretch(), "overhead_ms": self.model.overhead_ms,
                "arrival_rate_per_s": 1e3 * self.arrival_rate(now_ms), "switches": self.switches,
                "dominated": sorted(self.dominated)}
