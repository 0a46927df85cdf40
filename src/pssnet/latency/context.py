"""Whole subnets timed end to end, with the time of every block inside the network.

A block timed alone runs on warm caches; inside a network it finds its weights and input where
the previous block left them. Running an extracted static subnet block by block and reading the
clock between blocks gives both at once: the end-to-end latency (the sum) and each block's
latency in its real context, which the table's end-to-end correction is fitted to.

Protocol: eval mode, inference mode, batch of the settings, the input already at the subnet's
resolution (the network's resize is a no-op; the image's resize belongs to preprocessing, whose
source size is not a property of the subnet), the allocator in its steady state
(:func:`pssnet.timing.steady_allocator`). Rounds interleave the subnets as
:func:`pssnet.timing.time_calls` does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .. import schema
from ..space import Subnet
from ..supernet import StaticSubnet, Supernet, extract_subnet
from ..timing import MeasureSettings, steady_allocator


@dataclass(frozen=True)
class SubnetTiming:
    """One whole subnet timed end to end: every block's time in context and the total (ms, each
    the settings' statistic over its samples)."""

    subnet: Subnet
    parts_ms: tuple[float, ...]  # each block, then the classifier
    total_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": self.subnet.to_dict(), "parts_ms": list(self.parts_ms), "total_ms": self.total_ms}

    def scaled(self, factor: float) -> "SubnetTiming":
        """The same timing with every time multiplied by ``factor``."""
        return SubnetTiming(self.subnet, tuple(round(v * factor, 6) for v in self.parts_ms),
                            round(self.total_ms * factor, 6))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> "SubnetTiming":
        subnet = Subnet.from_dict(dict(schema.mapping(schema.require(data, "subnet", where), f"{where}.subnet")))
        parts = schema.sequence(schema.require(data, "parts_ms", where), f"{where}.parts_ms")
        return cls(subnet, tuple(schema.number(v, f"{where}.parts_ms[{i}]", low=0.0) for i, v in enumerate(parts)),
                   schema.number(schema.require(data, "total_ms", where), f"{where}.total_ms", low=0.0, low_open=True))


def summarize_timings(samples: Mapping[str, np.ndarray], subnets: Sequence[Subnet], statistic: str) -> list[SubnetTiming]:
    """:class:`SubnetTiming` of each subnet from its ``[samples, parts + 1]`` milliseconds."""
    reduce = np.min if statistic == "min" else np.median
    timings = []
    for s in subnets:
        summary = reduce(samples[s.key], axis=0)
        # Nanoseconds are far below the noise: rounded, the table's JSON stays short.
        timings.append(SubnetTiming(s, tuple(round(float(v), 6) for v in summary[:-1]), round(float(summary[-1]), 6)))
    return timings


def split_forward(model: StaticSubnet, x: torch.Tensor, clock: Callable[[], float] = time.perf_counter) -> np.ndarray:
    """Seconds spent in each block of ``model``, then in its classifier (pool + linear), then the
    total, for one forward pass of ``x`` (already at the model's resolution) on the CPU."""
    times = []
    start = last = clock()
    for block in model.features:
        x = block(x)
        now = clock()
        times.append(now - last)
        last = now
    model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
    now = clock()
    times += [now - last, now - start]
    return np.asarray(times)


def split_forward_cuda(model: StaticSubnet, x: torch.Tensor) -> np.ndarray:
    """:func:`split_forward` on a GPU: events recorded between blocks, one synchronisation at the
    end, so that the blocks' kernels queue as they do in a plain forward pass."""
    events = [torch.cuda.Event(enable_timing=True) for _ in range(len(model.features) + 2)]
    events[0].record()
    for block, event in zip(model.features, events[1:]):
        x = block(x)
        event.record()
    model.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
    events[-1].record()
    events[-1].synchronize()
    times = [a.elapsed_time(b) for a, b in zip(events, events[1:])] + [events[0].elapsed_time(events[-1])]
    return np.asarray(times) / 1e3


def _prepared(net: Supernet, subnet: Subnet, settings: MeasureSettings) -> tuple[StaticSubnet, torch.Tensor]:
    device = torch.device(settings.device)
    model = extract_subnet(net, subnet).eval().to(device)
    x = torch.randn(settings.batch, net.layout.in_chans, subnet.resolution, subnet.resolution, device=device)
    return model, x


def time_in_context(net: Supernet, subnets: Sequence[Subnet], settings: MeasureSettings,
                    on_round: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """Per subnet key: ``[samples, parts + 1]`` milliseconds (every block, the classifier, then the
    total) over ``settings.rounds`` interleaved rounds of ``warmup`` untimed and ``repeats`` timed
    forward passes each; the order of the subnets rotates from round to round."""
    clock = settings.timer()
    steady_allocator()
    if settings.device == "cuda":
        split: Callable[[StaticSubnet, torch.Tensor], np.ndarray] = split_forward_cuda
    else:
        split = lambda model, x: split_forward(model, x, clock)  # noqa: E731
    prepared = {s.key: _prepared(net, s, settings) for s in subnets}
    keys = list(prepared)
    samples: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with torch.inference_mode():
        for r in range(settings.rounds):
            for key in keys[r % len(keys):] + keys[:r % len(keys)]:
                model, x = prepared[key]
                for _ in range(settings.warmup):
                    model(x)
                samples[key] += [split(model, x) * 1e3 for _ in range(settings.repeats)]
            if on_round:
                on_round(len(keys))
    return {k: np.stack(v) for k, v in samples.items()}
