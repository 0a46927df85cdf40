"""Budgets as the command line writes them: ``TYPE=NUMBER`` texts and timed budget traces."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..constraints import KINDS
from ..errors import UserError


def parse_budgets(texts: Sequence[str]) -> dict[str, float]:
    """``["flops=20", "latency_cpu=3.5"]`` -> ``{"flops": 20.0, "latency_cpu": 3.5}``."""
    budgets: dict[str, float] = {}
    for text in texts:
        kind, sep, value = text.partition("=")
        kind = kind.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not kind or not math.isfinite(number):
            raise UserError(f"bad budget '{text}'; write TYPE=NUMBER, e.g. flops=20 or latency_cpu=3.5")
        if kind not in KINDS:
            raise UserError(f"unknown budget type '{kind}' in '{text}'; use one of {', '.join(KINDS)}")
        if kind in budgets:
            raise UserError(f"budget type '{kind}' given twice; give one value per type")
        budgets[kind] = number
    return budgets


@dataclass(frozen=True)
class TraceEvent:
    """One trace line: from ``time`` (seconds) on, the deployed subnet must fit ``budgets``."""

    time: float
    budgets: Mapping[str, float]


def parse_trace(text: str, source: str = "trace") -> list[TraceEvent]:
    """Lines ``TIMESTAMP TYPE=N [TYPE=N ...]`` (seconds, non-decreasing); ``#`` starts a comment."""
    events: list[TraceEvent] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        try:
            time = float(fields[0])
        except ValueError:
            time = math.nan
        if not math.isfinite(time) or time < 0:
            raise UserError(f"{where}: '{fields[0]}' is not a time stamp; write e.g. '0.5 flops=20'")
        if len(fields) < 2:
            raise UserError(f"{where}: no budget after the time stamp; write e.g. '{fields[0]} flops=20'")
        if events and time < events[-1].time:
            raise UserError(f"{where}: time {time:g} is before the previous line's {events[-1].time:g}; "
                            "sort the trace by time")
        try:
            budgets = parse_budgets(fields[1:])
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        events.append(TraceEvent(time, budgets))
    if not events:
        raise UserError(f"{source} has no budget lines; write one per line, e.g. '0.0 flops=20'")
    return events
