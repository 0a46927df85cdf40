"""The one inference worker: a thread that takes batches from the :class:`Batcher`, lets the
:class:`SloController` pick the subnet, runs :class:`~pssnet.deploy.AdaptiveNet` and answers
each request's future. It also tells the controller what the server's CPU went to: each forward
pass's own CPU time and the process's meanwhile, and the process's CPU time outside forward
passes per request served (HTTP, decoding, batching: see :mod:`.service_model`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from ..deploy import AdaptiveNet
from .batcher import Batcher, Job
from .controller import SloController
from .metrics import ServingMetrics


class NonFiniteOutput(ArithmeticError):
    """The model gave NaN or infinite outputs for a request (answered 500, counted)."""


@dataclass(frozen=True)
class Prediction:
    """The answer to one request: class probabilities, serving subnet and its times (ms)."""

    probabilities: list[float]
    subnet: str
    queue_ms: float
    inference_ms: float


class InferenceWorker:
    """Runs batches on one thread. The controller is touched only under ``lock``."""

    def __init__(self, adaptive: AdaptiveNet, controller: SloController, batcher: Batcher,
                 metrics: ServingMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.adaptive = adaptive
        self.controller = controller
        self.batcher = batcher
        self.metrics = metrics
        self.clock = clock
        self.lock = threading.Lock()
        self._by_key = {r.key: r for r in adaptive.subnets}
        self._thread = threading.Thread(target=self._loop, name="pssnet-inference", daemon=True)

    # -- start-up ------------------------------------------------------------

    def calibrate(self, example: torch.Tensor, batch_sizes: Sequence[int], repeats: int = 5) -> dict[str, dict]:
        """Measure each subnet's service time at ``batch_sizes`` (the fastest of ``repeats`` after
        one warm-up call: steadier than the median where other load comes and goes) as the
        controller's base times; returns ``{key: {batch: ms}}``."""
        table: dict[str, dict] = {}
        with torch.inference_mode():
            for key, retained in self._by_key.items():
                self.adaptive.switch_to(retained)
                for size in sorted(set(batch_sizes)):
                    x = example[:1].expand(size, *example.shape[1:]).contiguous()
                    times = []
                    for _ in range(repeats + 1):
                        t0 = self.clock()
                        self.adaptive(x)
                        times.append(1e3 * (self.clock() - t0))
                    ms = min(times[1:])
                    self.controller.calibrate(key, size, ms)
                    table.setdefault(key, {})[size] = ms
        self.adaptive.switch_to(self._by_key[self.controller.current])
        return table

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def status(self) -> Mapping[str, Any]:
        with self.lock:
            return dict(self.controller.status(1e3 * self.clock()))

    # -- serving -------------------------------------------------------------

    def _loop(self) -> None:
        self._process_mark = time.process_time()
        self._cpu_accounting = torch.get_num_threads() == 1
        while (pending := self.batcher.next_batch()) is not None:
            waiting = pending.waiting
            needs = [job.need for job in waiting]
            with self.lock:
                now = 1e3 * self.clock()
                self.controller.note_arrivals([1e3 * t for t in pending.new_arrivals], pending.new_needs)
                decision = self.controller.choose(now, [1e3 * job.arrival for job in waiting],
                                                  needs if any(needs) else None)
                serving, switches = self.controller.current, self.controller.switches
                fill = self.controller.fill_size()
            self.batcher.set_fill(fill)
            # A batch on another subnet than the serving one: a backlog's, or a request's own need.
            self.metrics.record_decision(switches, backlog=decision.key != serving)
            self._run(self.batcher.take(decision.members), decision.key)

    def _run(self, jobs: list[Job], key: str) -> None:
        # Requests whose client went away (future cancelled) are dropped; the rest can no longer be cancelled.
        jobs = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        retained = self._by_key[key]
        if self.adaptive.current is not retained:
            self.adaptive.switch_to(retained)
        with self.lock:
            size = self.controller.run_size(key, len(jobs))
        try:
            x = torch.stack([job.input for job in jobs])
            if size > len(jobs):  # padded to a size measured faster; the extra rows are dropped
                x = torch.cat([x, x[:1].expand(size - len(jobs), *x.shape[1:])])
            process0, own0, start = time.process_time(), time.thread_time(), self.clock()
            with torch.inference_mode():
                logits = self.adaptive(x)
            done, own1, process1 = self.clock(), time.thread_time(), time.process_time()
            probabilities = torch.softmax(logits[:len(jobs)].float(), dim=1)
            finite = torch.isfinite(probabilities)
            # one reduction in the common case; per row only when something is not finite
            finite = [True] * len(jobs) if bool(finite.all()) else finite.all(dim=1).tolist()
        except Exception as exc:  # a failed batch fails its requests, not the server
            for job in jobs:
                job.future.set_exception(exc)
            return
        service_ms = 1e3 * (done - start)
        own_ms, process_ms = 1e3 * (own1 - own0), 1e3 * (process1 - process0)
        # The process's CPU since the previous pass ended, less this pass's own: the other work of
        # the requests. Only with one torch thread is the pass's CPU all on this thread; with more,
        # the controller learns from wall times alone (the overhead is then in the slow-down).
        outside_ms = 1e3 * (process1 - self._process_mark) - own_ms
        self._process_mark = process1
        with self.lock:
            if self._cpu_accounting:
                self.controller.observe(key, len(jobs), service_ms, (own_ms, process_ms))
                self.controller.observe_overhead(outside_ms, len(jobs))
            else:
                self.controller.observe(key, len(jobs), service_ms)
            slowdown = self.controller.slowdown
        self.metrics.record_batch(len(jobs), key, retained.resources.get("flops", 0.0), slowdown)
        for job, row, ok in zip(jobs, probabilities.tolist(), finite):
            if ok:
                job.future.set_result(Prediction(row, key, 1e3 * (start - job.arrival), service_ms))
            else:  # never an answer with NaN in it (not JSON, and not a prediction)
                job.future.set_exception(NonFiniteOutput(f"subnet {key} gave non-finite probabilities"))
