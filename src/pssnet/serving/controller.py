"""The latency controller of adaptive serving: which retained subnet runs the next batch.

Pure logic: no threads, no clock of its own (every call gets ``now_ms``), no randomness, so the
same observations always give the same decisions. Its predictions come from the service-time
model (:mod:`.service_model`), its objective and knobs from :class:`~.config.SloConfig`.

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

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError
from .config import SloConfig
from .service_model import ServiceModel, SubnetProfile


@dataclass(frozen=True)
class Decision:
    """The subnet and size of the next batch, and the predicted completion (ms) of its oldest request."""

    key: str
    batch: int
    predicted_ms: float


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
    after it; a worker asks it for the size to run a batch at (:meth:`run_size`) and reports the
    server's CPU time (:meth:`observe_overhead`) and start-up measurements (:meth:`calibrate`).
    ``fixed`` pins one subnet (the baseline; any retained one); ``model`` (the
    :class:`ServiceModel`) still learns.
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

    def run_size(self, key: str, batch: int) -> int:
        """The size to run a batch of ``batch`` on ``key`` at (see :meth:`ServiceModel.run_size`)."""
        return self.model.run_size(key, batch)

    @property
    def slowdown(self) -> float:
        """The service model's shared slow-down factor."""
        return self.model.slowdown

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
