"""What the server reports about itself: Prometheus metrics on a per-server registry, and a
window of recent request latencies for ``/status``."""

from __future__ import annotations

import threading
from collections import deque
from typing import Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)


class ServingMetrics:
    """Request latency histogram, SLO and deadline misses, refusals and server errors, requests per
    subnet, switches and backlog batches, current subnet's FLOPs and batch sizes."""

    def __init__(self, target_ms: float, max_batch: int, window: int = 2000) -> None:
        self.target_ms = target_ms
        self.registry = CollectorRegistry()  # per server: several servers may share a process (tests)
        r = self.registry
        self.latency = Histogram("pssnet_request_latency_seconds", "Arrival to response of /predict requests",
                                 buckets=LATENCY_BUCKETS_S, registry=r)
        self.slo_misses = Counter("pssnet_slo_misses", "Requests without X-Deadline-Ms answered later than the "
                                  "latency target", registry=r)
        self.deadline_misses = Counter("pssnet_deadline_misses", "Requests answered later than their own "
                                       "X-Deadline-Ms", registry=r)
        self.rejected = Counter("pssnet_rejected_requests", "Requests refused with a 4xx status", ["status"],
                                registry=r)
        self.server_errors = Counter("pssnet_server_errors", "Requests answered with a 5xx status (500: a failure "
                                     "of the server; 503: shutting down or too many bodies at once)", ["status"],
                                     registry=r)
        self.subnet_requests = Counter("pssnet_subnet_requests", "Requests run on each subnet", ["subnet"],
                                       registry=r)
        self.switches = Counter("pssnet_subnet_switches", "Changes of the serving subnet (as /status counts them)",
                                registry=r)
        self.backlog_batches = Counter("pssnet_backlog_batches", "Batches run on a cheaper subnet than the serving "
                                       "one, to clear a backlog in time", registry=r)
        self.subnet_flops = Gauge("pssnet_current_subnet_mflops", "MFLOPs of the subnet serving now", registry=r)
        self.slowdown = Gauge("pssnet_slowdown_factor", "Observed over base service time (EWMA)", registry=r)
        self.batch_size = Histogram("pssnet_batch_size", "Requests per inference batch",
                                    buckets=tuple(sorted({1, 2, 4, 8, 16, 32, 64, max_batch})), registry=r)
        self.target = Gauge("pssnet_latency_target_seconds", "The latency target", registry=r)
        self.target.set(target_ms / 1e3)
        self._recent: deque[float] = deque(maxlen=window)
        self._switches_seen = 0  # of the controller's count, already added to the counter
        self._lock = threading.Lock()

    def record_request(self, latency_ms: float, deadline_ms: Optional[float] = None) -> None:
        """An answered request: its latency, against its own deadline where it gave one, else the target."""
        self.latency.observe(latency_ms / 1e3)
        if deadline_ms is not None:
            if latency_ms > deadline_ms:
                self.deadline_misses.inc()
        elif latency_ms > self.target_ms:
            self.slo_misses.inc()
        with self._lock:
            self._recent.append(latency_ms)

    def record_decision(self, serving_switches: int, backlog: bool) -> None:
        """The controller's count of serving-subnet changes so far, and whether this batch clears a backlog."""
        if serving_switches > self._switches_seen:
            self.switches.inc(serving_switches - self._switches_seen)
            self._switches_seen = serving_switches
        if backlog:
            self.backlog_batches.inc()

    def record_status(self, status: int) -> None:
        """Count a refusal (4xx) or a server error (5xx) of any endpoint."""
        if 400 <= status < 500:
            self.rejected.labels(str(status)).inc()
        elif status >= 500:
            self.server_errors.labels(str(status)).inc()

    def record_batch(self, size: int, key: str, flops: float, slowdown: float) -> None:
        self.batch_size.observe(size)
        self.subnet_requests.labels(key).inc(size)
        self.subnet_flops.set(flops)
        self.slowdown.set(slowdown)

    def recent_percentile(self, q: float) -> Optional[float]:
        """The ``q`` quantile (0..1) of the recent request latencies in ms (None before any)."""
        with self._lock:
            ordered = sorted(self._recent)
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
