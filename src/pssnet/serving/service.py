"""One serving process's parts, assembled from a bundle: preprocessing, controller, batcher,
inference worker and metrics, with start (calibrate, then serve) and drain."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Optional, Sequence

import torch

from ..deploy import AdaptiveNet, RetainedSubnet
from ..resources import UNITS
from .batcher import Batcher, Job
from .config import ServeConfig
from .controller import Need, SloController
from .metrics import ServingMetrics
from .preprocess import Preprocessing, RequestError, preprocessing_for
from .service_model import subnet_profiles
from .worker import InferenceWorker

MAX_DEADLINE_MS = 3_600_000.0  # an hour: beyond it, a deadline is not a latency need


def parse_deadline(text: str) -> float:
    """An ``X-Deadline-Ms`` value: milliseconds in (0, MAX_DEADLINE_MS]; else a 400 naming the header."""
    try:
        value = float(text.strip())
    except ValueError:
        value = math.nan
    if not 0 < value <= MAX_DEADLINE_MS:  # also refuses NaN
        raise RequestError(400, f"X-Deadline-Ms: {text.strip()[:40]!r} is not a deadline; give milliseconds "
                                f"above 0 and at most {MAX_DEADLINE_MS:.0f}, e.g. X-Deadline-Ms: 30")
    return value


def parse_budget(text: str, subnets: Sequence[RetainedSubnet], kinds: Sequence[str]) -> frozenset[str]:
    """The keys of the retained subnets within an ``X-Budget`` (``KIND=VALUE[,KIND=VALUE...]``, any
    kind the bundle's subnets all have); a malformed or unmeetable budget is a 400 naming the header."""
    example = f"e.g. X-Budget: {kinds[0]}=15" if kinds else "this bundle records no resources"
    limits: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        kind, sep, raw = (s.strip() for s in part.partition("="))
        if not sep or kind in limits:
            raise RequestError(400, f"X-Budget: {part[:40]!r} is not KIND=VALUE (each kind once); {example}")
        if kind not in kinds:
            raise RequestError(400, f"X-Budget: unknown resource {kind[:40]!r}; this bundle budgets "
                                    f"{', '.join(kinds) or 'nothing'}")
        try:
            limits[kind] = float(raw)
        except ValueError:
            limits[kind] = math.nan
        if not 0 < limits[kind] < math.inf:
            raise RequestError(400, f"X-Budget: {kind}={raw[:40]!r} is not a positive number; {example}")
    allowed = frozenset(r.key for r in subnets if all(r.resources[k] <= v for k, v in limits.items()))
    if not allowed:
        least = ", ".join(f"{k}={min(r.resources[k] for r in subnets):.4g} {UNITS[k]}" for k in limits)
        raise RequestError(400, f"X-Budget: no retained subnet fits {text.strip()[:80]!r} (the least of each: "
                                f"{least}); raise it")
    return allowed


def resolve_fixed(adaptive: AdaptiveNet, fixed: Optional[str]) -> Optional[str]:
    """The key that ``--fixed largest|smallest|KEY`` pins (largest/smallest by FLOPs)."""
    if fixed is None:
        return None
    by_flops = sorted(adaptive.subnets, key=lambda r: (r.resources.get("flops", 0.0), r.key))
    if fixed == "largest":
        return by_flops[-1].key
    if fixed == "smallest":
        return by_flops[0].key
    return adaptive.find(fixed).key


class ServingService:
    """The serving process without its HTTP layer."""

    def __init__(self, config: ServeConfig, clock=time.monotonic) -> None:
        self.config = config
        self.clock = clock
        if config.threads:
            torch.set_num_threads(config.threads)  # the process serves this bundle only
        self.adaptive = AdaptiveNet.load(config.bundle)
        info = self.adaptive.info
        self.preprocessing: Preprocessing = preprocessing_for(info, info.get("preprocessing"))
        profiles = subnet_profiles(self.adaptive.subnets, self.adaptive.kinds)
        self.controller = SloController(profiles, config.slo, resolve_fixed(self.adaptive, config.fixed))
        slo = config.slo
        self.batcher = Batcher(slo.max_batch, slo.max_wait_ms / 1e3, clock)
        self.metrics = ServingMetrics(slo.target_ms, slo.max_batch)
        self.worker = InferenceWorker(self.adaptive, self.controller, self.batcher, self.metrics, clock)
        self.calibration: dict[str, dict] = {}
        self.started = False

    def start(self) -> None:
        """Measure every subnet's base service times, then start the inference worker."""
        p = self.preprocessing
        example = torch.zeros(1, p.in_chans, p.image_size, p.image_size)
        # Powers of two and max_batch: where a larger size runs faster, smaller batches are padded to it.
        top = self.config.slo.max_batch
        sizes = sorted({1 << i for i in range(top.bit_length()) if 1 << i <= top} | {top})
        self.calibration = self.worker.calibrate(example, sizes, self.config.calibration_repeats)
        self.metrics.subnet_flops.set(self.controller.profile(self.controller.current).flops)
        self.worker.start()
        self.started = True

    def need(self, deadline: Optional[str], budget: Optional[str]) -> Need:
        """The :class:`Need` of a request's ``X-Deadline-Ms`` and ``X-Budget`` header values (either
        may be None); a bad value raises a 400 :class:`RequestError` naming its header."""
        allowed = parse_budget(budget, self.adaptive.subnets, self.adaptive.kinds) if budget is not None else None
        return Need(parse_deadline(deadline) if deadline is not None else None, allowed)

    def submit(self, x: torch.Tensor, arrival: float, need: Optional[Need] = None) -> Job:
        return self.batcher.submit(x, arrival, need)

    def drain(self) -> None:
        """A shutdown has begun: run the queued requests without waiting for batches to fill."""
        self.batcher.hurry()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Take no new requests, answer the queued ones, stop the worker."""
        self.batcher.close()
        if self.started:
            self.worker.join(timeout_s)

    def status(self) -> Mapping[str, Any]:
        status = dict(self.worker.status())
        slo = self.config.slo
        current = self.controller.profile(status["subnet"])
        status.update({
            "subnet_mflops": current.flops, "subnet_accuracy": current.accuracy,
            "target_ms": slo.target_ms, "quantile": slo.quantile,
            "p50_ms": self.metrics.recent_percentile(0.5), "p95_ms": self.metrics.recent_percentile(0.95),
            "queued": len(self.batcher), "max_batch": slo.max_batch, "max_wait_ms": slo.max_wait_ms,
            "subnets": [{"key": p.key, "accuracy": p.accuracy, "mflops": p.flops,
                         "dominated": p.key in self.controller.dominated,
                         "base_ms": {str(b): ms for b, ms in self.calibration.get(p.key, {}).items()}}
                        for p in sorted(self.controller.profiles.values(), key=lambda p: (-p.accuracy, p.key))],
            "input": self.preprocessing.describe(),
            "input_shape": [self.preprocessing.in_chans, self.preprocessing.image_size, self.preprocessing.image_size],
        })
        return status

