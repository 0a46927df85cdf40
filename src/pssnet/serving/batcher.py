"""Dynamic batching: requests queue up until the controller's fill size (see
:meth:`~.controller.SloController.fill_size`) wait or the oldest has waited ``max_wait_s``; one
consumer (the inference worker) takes the requests of each batch, chosen by the controller."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from .controller import Need


class Closed(Exception):
    """The batcher is draining for shutdown and takes no new requests."""


@dataclass
class Job:
    """One request: its model input, arrival time (clock seconds), its own need (None: no
    header) and the future of its result."""

    input: Any
    arrival: float
    need: Optional[Need] = None
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class Pending:
    """What the consumer sees before a batch: all waiting jobs (oldest first) and the arrival
    times and needs of jobs that came in since the previous batch."""

    waiting: list[Job]
    new_arrivals: list[float]
    new_needs: list[Optional[Need]]


class Batcher:
    """A thread-safe request queue with batch formation for a single consumer."""

    def __init__(self, max_batch: int, max_wait_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.clock = clock
        self._fill = max_batch  # until the controller has seen a queue
        self._queue: deque[Job] = deque()
        self._new: list[float] = []
        self._new_needs: list[Optional[Need]] = []
        self._closed = False
        self._hurried = False
        self._cond = threading.Condition()

    def submit(self, item: Any, arrival: Optional[float] = None, need: Optional[Need] = None) -> Job:
        """Queue a request (``arrival`` defaults to now); raises :class:`Closed` while draining."""
        job = Job(item, self.clock() if arrival is None else arrival, need)
        with self._cond:
            if self._closed:
                raise Closed("the server is shutting down")
            self._queue.append(job)
            self._new.append(job.arrival)
            self._new_needs.append(need)
            self._cond.notify()
        return job

    def set_fill(self, size: int) -> None:
        """How many waiting requests make a batch due (at most ``max_batch``, at least 1)."""
        with self._cond:
            self._fill = max(1, min(int(size), self.max_batch))

    def hurry(self) -> None:
        """Stop waiting for batches to fill (a shutdown has begun: no more requests are coming)."""
        with self._cond:
            self._hurried = True
            self._cond.notify_all()

    def close(self) -> None:
        """Take no new requests; the consumer still gets every queued one, then None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def next_batch(self) -> Optional[Pending]:
        """Block until a batch is due (the fill size waiting, or its oldest job waited
        ``max_wait_s``, or hurried, or closing); None once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._closed)
            if not self._queue:
                return None
            deadline = self._queue[0].arrival + self.max_wait_s
            while len(self._queue) < self._fill and not (self._closed or self._hurried):
                remaining = deadline - self.clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            pending = Pending(list(self._queue), self._new, self._new_needs)
            self._new, self._new_needs = [], []
            return pending

    def take(self, members: Sequence[int]) -> list[Job]:
        """Remove and return the jobs at ``members`` (positions in the last :class:`Pending`'s
        ``waiting``, which is the start of the queue: only the consumer removes jobs), in that order."""
        with self._cond:
            if list(members) == list(range(len(members))):
                return [self._queue.popleft() for _ in range(min(len(members), len(self._queue)))]
            queue = list(self._queue)
            taken = set(members)
            self._queue = deque(job for i, job in enumerate(queue) if i not in taken)
            return [queue[i] for i in members]
