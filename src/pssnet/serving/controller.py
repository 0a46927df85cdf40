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

Batch sizes: the controller also picks each batch's size, up to ``max_batch``: all the waiting
requests up to the subnet's :meth:`SloController.batch_cap`, the largest batch predicted to
complete within the target (and, after tighter deadlines, not to block them). Caps differ per
subnet and move with the slow-down; the steady state of a subnet is predicted at its cap. A
backlog that no candidate clears in time is served in batches of ``max_batch``, for throughput.
How many requests a batch waits for (up to ``max_wait_ms``) is the longest queue of the last
``fill_window`` batches (:meth:`SloController.fill_size`): a closed loop of 16 clients is served
in batches of 16, not 15 and 1.

Per-request needs (:class:`Need`: ``X-Deadline-Ms``, ``X-Budget``): requests are taken earliest
deadline first (a request without a header has the target as its deadline). Each class of
waiting requests (one deadline and budget) gets the most accurate subnet within its budget that
keeps its deadline the way the target is kept (in steady state at the class's arrival rate, and
for its waiting requests) within its share of the server's time: shares go by arrival rate, the
loosest deadlines choose first, and a class's least costly share is reserved until its turn, so
the spare time goes to the requests that can wait for a more accurate subnet, never the time a
tighter class needs. The batch holds the waiting requests, earliest deadline first, whose class
chose the most urgent one's subnet; where no subnet keeps the most urgent need, every waiting
request that may run on the least costly one (throughput first). Requests without a header keep
the serving subnet of the global target.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError
from .config import SloConfig
from .service_model import ServiceModel, SubnetProfile

# Most distinct budgets whose candidate lists are kept (the clients choose the budgets).
BUDGET_CACHE = 256


@dataclass(frozen=True)
class Need:
    """What a request asks for itself: a deadline in ms from its arrival (None: the target) and
    the keys of the subnets its budget allows (None: any)."""

    deadline_ms: Optional[float] = None
    allowed: Optional[frozenset[str]] = None


@dataclass(frozen=True)
class Decision:
    """The subnet and size of the next batch, its requests (positions in the waiting list, most
    urgent first) and the predicted completion (ms since arrival) of the most urgent."""

    key: str
    batch: int
    predicted_ms: float
    members: tuple[int, ...]


def dominated(profiles: Sequence[SubnetProfile]) -> set[str]:
    """Keys of the subnets that another one matches or beats in accuracy at no more static cost
    (of exact ties in both, the first by key stays)."""
    def beats(q: SubnetProfile, p: SubnetProfile) -> bool:
        if q.accuracy == p.accuracy and q.cost == p.cost:
            return q.key < p.key
        return q.accuracy >= p.accuracy and q.cost <= p.cost

    return {p.key for p in profiles if any(q is not p and beats(q, p) for q in profiles)}


def by_accuracy(profiles: Sequence[SubnetProfile]) -> list[SubnetProfile]:
    """The profiles that no other one of them dominates, most accurate first."""
    out = dominated(profiles)
    return sorted((p for p in profiles if p.key not in out), key=lambda p: (-p.accuracy, p.cost, p.key))


class NeedRates:
    """Arrival rates per :class:`Need` (None: requests without a header) over a sliding window."""

    def __init__(self, window_ms: float) -> None:
        self.window_ms = window_ms
        self._times: dict[Optional[Need], deque[float]] = {}
        self._first: dict[Optional[Need], float] = {}

    def note(self, time_ms: float, need: Optional[Need]) -> None:
        self._times.setdefault(need, deque()).append(time_ms)
        self._first.setdefault(need, time_ms)

    def rates(self, now_ms: float) -> dict[Optional[Need], float]:
        """Requests per ms of each need seen in the window (needs gone from it are forgotten)."""
        start, out = now_ms - self.window_ms, {}
        for need in list(self._times):
            times = self._times[need]
            while times and times[0] < start:
                times.popleft()
            if not times:
                del self._times[need], self._first[need]
                continue
            out[need] = len(times) / max(now_ms - max(start, self._first[need]), self.window_ms / 20)
        return out


class SloController:
    """Picks the subnet and size of each batch to keep ``quantile`` of latencies within ``target_ms``.

    Call :meth:`note_arrivals` with the arrival times and needs of new requests, :meth:`choose`
    before each batch with the arrival times of all waiting requests (oldest first) and their
    :class:`Need` (None: no header), and :meth:`observe` after it; a worker asks it for the size to run a
    batch at (:meth:`run_size`) and how many requests to wait for (:meth:`fill_size`), and
    reports the server's CPU time (:meth:`observe_overhead`) and start-up measurements
    (:meth:`calibrate`). ``fixed`` pins one subnet (the baseline; any retained one; a request's
    budget still caps it); ``model`` (the :class:`ServiceModel`) still learns.
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
        self.ranked = by_accuracy(profiles)  # most accurate first
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
        self._queue_lengths: deque[int] = deque(maxlen=config.fill_window)
        self._deadlines: deque[tuple[float, float]] = deque()  # (time, deadline): a sliding-window minimum
        self._budget_ranked: dict[frozenset[str], list[SubnetProfile]] = {}
        self._need_rates = NeedRates(config.rate_window_ms)
        self._need_keys: dict[Optional[Need], str] = {}  # each need's latest subnet

    def least_costly(self, among: Optional[Sequence[SubnetProfile]] = None) -> str:
        """The candidate (of ``among``, default all) with the least predicted time per request at
        ``max_batch`` (measured where measured, else the prior), the place to start and to fall back to."""
        size = self.config.max_batch
        return min(among or self.ranked,
                   key=lambda p: (self.model.cost_per_request(p.key, size), -p.accuracy, p.key)).key

    def profile(self, key: str) -> SubnetProfile:
        return self.profiles[key]

    # -- arrival rate --------------------------------------------------------

    def note_arrivals(self, times_ms: Sequence[float], needs: Optional[Sequence[Optional[Need]]] = None) -> None:
        """New requests: their arrival times and (None: all without a header) their :class:`Need`."""
        for i, t in enumerate(times_ms):
            self._arrivals.append(float(t))
            self._need_rates.note(float(t), needs[i] if needs is not None else None)
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

    def batch_cap(self, key: str, deadline_ms: Optional[float] = None) -> int:
        """The largest batch size on ``key`` (at most ``max_batch``; 0 if none) whose predicted
        time, stretched by the quantile, fits a deadline (default the target): a longer batch
        makes every request in it miss. Where tighter deadlines were seen in the last
        ``rate_window_ms``, the batch followed by a batch of one on the least costly candidate
        must also fit ``margin`` of the tightest, so that a long batch does not make a tight
        request that arrives as it starts miss. (Clipper finds its batch cap by probing:
        additive increase until a batch misses, then multiplicative decrease; this one is
        predicted from the measured times and moves with the slow-down at once.)"""
        cfg, predict, stretch = self.config, self.model.predict_ms, self.model.stretch()
        deadline = cfg.target_ms if deadline_ms is None else deadline_ms
        own = deadline / stretch
        tightest = self._deadlines[0][1] if self._deadlines else deadline
        blocking = cfg.margin * tightest / stretch - predict(self.least_costly(), 1) if tightest < deadline \
            else math.inf

        def fits(b: int) -> bool:
            t = predict(key, b)
            return t <= own and t <= blocking

        return self._largest(fits, cfg.max_batch)

    @staticmethod
    def _largest(fits: Any, top: int) -> int:
        """The largest ``b`` in [1, top] with ``fits(b)``, by bisection (``fits`` holds up to some
        size); 0 where none fits."""
        if fits(top):
            return top
        if not fits(1):
            return 0
        low, high = 1, top  # fits(low), not fits(high)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return low

    def fill_size(self) -> int:
        """How many requests the next batch waits for (up to ``max_wait_ms``): the longest queue of
        the last ``fill_window`` batches, at most ``max_batch`` (``max_batch`` before any batch)."""
        return min(self.config.max_batch, max(self._queue_lengths, default=self.config.max_batch))

    def completion_ms(self, key: str, now_ms: float, waiting_ms: Sequence[float], batch: Optional[int] = None) -> float:
        """Predicted arrival-to-completion time of the worst waiting request, served in FIFO
        batches of ``batch`` (default :meth:`batch_cap`)."""
        batch = batch or self.batch_cap(key)
        if batch == 0:  # not even one request fits in time
            return math.inf
        elapsed, worst = 0.0, 0.0
        for start in range(0, len(waiting_ms), batch):
            elapsed += self.model.predict_ms(key, min(batch, len(waiting_ms) - start))
            worst = max(worst, now_ms - waiting_ms[start] + elapsed)
        return worst

    def steady_ms(self, key: str, rate: float, utilisation: float, deadline_ms: Optional[float] = None) -> float:
        """Predicted latency in steady state at ``rate`` (per ms); inf if it would use more than
        ``utilisation`` of the subnet's capacity at its :meth:`batch_cap` for ``deadline_ms``
        (default the target). The batch is the smallest that keeps up."""
        if rate <= 0:
            return 0.0
        cfg, predict = self.config, self.model.predict_ms
        cap = self.batch_cap(key, deadline_ms)
        if cap == 0 or rate * predict(key, cap) > utilisation * cap:
            return math.inf
        size = next(b for b in range(1, cap + 1) if rate * predict(key, b) <= b)
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

    def choose(self, now_ms: float, waiting_ms: Sequence[float],
               needs: Optional[Sequence[Optional[Need]]] = None) -> Decision:
        """The subnet, size and requests of the next batch. ``waiting_ms``: the arrival times of
        the waiting requests, oldest first; ``needs``: each one's :class:`Need` (None, or None
        for a request: no header, the global target)."""
        if not waiting_ms:
            raise ValueError("choose() needs at least one waiting request")
        self._chosen = True
        self._queue_lengths.append(len(waiting_ms))
        if needs is not None and not any(needs):
            needs = None
        self._note_deadlines(now_ms, needs)
        if self.fixed is None:
            self._step(now_ms)
        if needs is None:
            key, batch, _ = self._plain_choice(now_ms, waiting_ms)
            batch = min(batch, len(waiting_ms))
            return Decision(key, batch, self.completion_ms(key, now_ms, waiting_ms[:batch], batch),
                            tuple(range(batch)))
        return self._choose_mixed(now_ms, waiting_ms, needs)

    def _note_deadlines(self, now_ms: float, needs: Optional[Sequence[Optional[Need]]]) -> None:
        """Keep the tightest deadline seen in the last ``rate_window_ms`` (a sliding-window minimum)."""
        target = self.config.target_ms
        tightest = target if needs is None else min(
            target if n is None or n.deadline_ms is None else n.deadline_ms for n in needs)
        window = self._deadlines
        while window and window[-1][1] >= tightest:
            window.pop()
        window.append((now_ms, tightest))
        while window[0][0] < now_ms - self.config.rate_window_ms:
            window.popleft()

    def _plain_choice(self, now_ms: float, waiting_ms: Sequence[float]) -> tuple[str, int, bool]:
        """Subnet and batch size for requests without a header, and whether the target is out of
        reach: the pinned or serving subnet at its :meth:`batch_cap`, the backlog's subnet
        (:meth:`_for_backlog`), or, where none clears the backlog in time, the least costly at
        ``max_batch`` (throughput first)."""
        if self.fixed is None:
            return self._for_backlog(now_ms, waiting_ms)
        if self._clears(self.fixed, now_ms, waiting_ms):
            return self.fixed, self.batch_cap(self.fixed), False
        return self.fixed, self.config.max_batch, True

    def _choose_mixed(self, now_ms: float, waiting_ms: Sequence[float], needs: Sequence[Optional[Need]]) -> Decision:
        """Earliest deadline first: the most urgent request's class picks the subnet and batch size,
        and the batch takes the waiting requests whose class chose the same subnet (where no
        subnet keeps the most urgent need, every waiting request that may run on the least costly
        one: throughput first, as for a backlog)."""
        due = [t + self._deadline(n) for t, n in zip(waiting_ms, needs)]
        order = sorted(range(len(waiting_ms)), key=lambda i: (due[i], waiting_ms[i], i))
        classes: dict[Optional[Need], list[int]] = {}
        for i in order:
            classes.setdefault(needs[i], []).append(i)
        choices = self._allocate(now_ms, waiting_ms, classes)
        head = order[0]
        key, batch, out_of_reach = choices[needs[head]]
        if out_of_reach:
            joins = [i for i in order if needs[i] is None or needs[i].allowed is None or key in needs[i].allowed]
        else:
            joins = [i for i in order if choices[needs[i]][0] == key]
        members = tuple(joins[:batch])
        return Decision(key, len(members), now_ms - waiting_ms[head] + self.model.predict_ms(key, len(members)),
                        members)

    def _deadline(self, need: Optional[Need]) -> float:
        return self.config.target_ms if need is None or need.deadline_ms is None else need.deadline_ms

    def _cost_ms(self, key: str, deadline_ms: float) -> float:
        """Predicted server time per request of ``key`` in batches of its cap for ``deadline_ms``."""
        batch = max(1, self.batch_cap(key, deadline_ms))
        return self.model.predict_ms(key, batch) / batch

    def _allocate(self, now_ms: float, waiting_ms: Sequence[float],
                  classes: Mapping[Optional[Need], Sequence[int]]) -> dict[Optional[Need], tuple[str, int, bool]]:
        """Each waiting class's subnet, batch size and whether its need is out of reach, loosest
        deadline first. The server's time (``max_utilisation`` of it) is shared by arrival rate:
        the needs seen lately but not waiting keep their latest subnet's share, each waiting class
        has its least costly subnet's share reserved until its turn, and a class may take a more
        accurate subnet only within what is left. So the spare capacity goes to the needs that
        can wait longest (larger batches, and a more accurate subnet), and a loose class never
        takes the time a tight one needs."""
        rates = self._need_rates.rates(now_ms)
        self._need_keys = {c: k for c, k in self._need_keys.items() if c in rates}
        least = {c: self.least_costly(self._ranked_within(c.allowed if c else None)) for c in classes}
        committed = sum(rate * self._cost_ms(self._need_keys.get(c) or self.least_costly(), self._deadline(c))
                        for c, rate in rates.items() if c not in classes)
        reserved = {c: rates.get(c, 0.0) * self._cost_ms(least[c], self._deadline(c)) for c in classes}
        choices = {}
        for c in sorted(classes, key=lambda c: (-self._deadline(c), classes[c][0])):
            spare = self.config.max_utilisation - committed - (sum(reserved.values()) - reserved.pop(c))
            members = classes[c]
            if c is None:
                choices[c] = self._plain_choice(now_ms, [waiting_ms[i] for i in sorted(members)])
            else:
                choices[c] = self._fit(c, now_ms - waiting_ms[members[0]], len(members), rates.get(c, 0.0), spare)
            committed += rates.get(c, 0.0) * self._cost_ms(choices[c][0], self._deadline(c))
            self._need_keys[c] = choices[c][0]
        return choices

    def _fit(self, need: Need, elapsed_ms: float, count: int, rate: float, spare: float) -> tuple[str, int, bool]:
        """The most accurate subnet within the budget that keeps this need's deadline as the
        target is kept for requests without a header: in steady state at the need's arrival rate
        (``rate``), within ``margin`` with the quantile's stretch, within the ``spare`` share of
        the server's time, and for the ``count`` waiting requests of this need (the most urgent
        waiting for ``elapsed_ms``), with the largest batch that completes them in time; else
        (out of reach) the least costly within the budget at ``max_batch``. Pinned (``fixed``):
        that subnet where the budget allows it, else the budget's most accurate."""
        ranked = self._ranked_within(need.allowed)
        deadline = self._deadline(need)
        if self.fixed is not None:
            key = self.fixed if need.allowed is None or self.fixed in need.allowed else ranked[0].key
            return key, max(1, self.batch_cap(key, deadline)), False
        steady_limit = self.config.margin * deadline / self.model.stretch()
        budget_ms = deadline - elapsed_ms
        for p in ranked:
            cap = self.batch_cap(p.key, deadline)
            if (cap and self.model.predict_ms(p.key, min(count, cap)) <= budget_ms
                    and rate * self._cost_ms(p.key, deadline) <= spare
                    and self.steady_ms(p.key, rate, self.config.max_utilisation, deadline) <= steady_limit):
                return p.key, self._largest(lambda b: self.model.predict_ms(p.key, b) <= budget_ms, cap), False
        return self.least_costly(ranked), self.config.max_batch, True

    def _ranked_within(self, allowed: Optional[frozenset[str]]) -> list[SubnetProfile]:
        """The candidates within a budget (the subnets no other one within it dominates), most accurate first."""
        if allowed is None:
            return self.ranked
        ranked = self._budget_ranked.get(allowed)
        if ranked is None:
            within = [self.profiles[k] for k in sorted(allowed) if k in self.profiles]
            if not within:
                raise ValueError("a budget that allows no retained subnet")
            if len(self._budget_ranked) >= BUDGET_CACHE:
                self._budget_ranked.clear()
            ranked = self._budget_ranked[allowed] = by_accuracy(within)
        return ranked

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

    def _for_backlog(self, now_ms: float, waiting_ms: Sequence[float]) -> tuple[str, int, bool]:
        """The subnet and batch size of this batch: the serving subnet at its :meth:`batch_cap`,
        unless the requests waiting now (a stall, a burst) would miss the target on it; then, for
        this batch only, the most accurate cheaper candidate that clears them in time, else the
        least costly one at ``max_batch``. The serving subnet stays, so a passing backlog costs a
        few batches of accuracy, not a step down and the hold before the step back up. Lasting
        interference raises the slow-down factor and moves the serving subnet itself (:meth:`_step`)."""
        if self._clears(self.current, now_ms, waiting_ms):
            return self.current, self.batch_cap(self.current), False
        cheaper = self.ranked[self._rank[self.current] + 1:]  # candidates: less accurate means cheaper
        key = next((p.key for p in cheaper if self._clears(p.key, now_ms, waiting_ms)), None)
        return (key, self.batch_cap(key), False) if key is not None else \
            (self.least_costly(), self.config.max_batch, True)

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
                "batch_cap": self.batch_cap(self.current), "fill": self.fill_size(),
                "dominated": sorted(self.dominated)}
