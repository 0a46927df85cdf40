"""Building a latency table on this device: exhaustive or fitted, resumable, corrected end to end.

- ``exhaustive``: every distinct block configuration of the space is timed alone.
- ``fitted``: whole subnets are timed block by block (:mod:`.context`), a stratified first
  sample and then subnets where the block models' held-out error is largest
  (:mod:`.sampling`), until the error stops improving or the time budget runs out; a model per
  block kind (:mod:`.fit`) predicts every configuration that was not measured.

Both end with the end-to-end correction (:mod:`.correction`) fitted on whole subnets. Building
is resumable: the partial table (entries, whole-subnet timings, time spent) is written
atomically as it grows, and a restart measures only what is missing.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np
import torch

from .. import devices, timing
from ..errors import UserError
from ..options import check_bounds, option
from ..space import Subnet
from ..supernet import Supernet
from ..timing import MeasureSettings
from .blocks import BlockConfig, config_call, count_configs, enumerate_configs
from .context import summarize_timings, time_in_context
from .fitting import refit_exhaustive, refit_fitted
from .sampling import first_sample_size, stratified_subnets, targeted_subnets
from .table import LatencyTable

AUTO_FIT_ABOVE = 5_000  # distinct blocks above which a build fits by default
CHUNK_SUBNETS = 16  # whole subnets timed together (interleaved) between saves
PACE_REFERENCES = 2  # the first subnets timed, timed again with every later chunk (_Build._time_chunk)
STALL_ROUNDS = 2  # adaptive rounds without improvement that end a fitted build
MIN_GAIN = 0.02  # relative improvement of the held-out error that counts


@dataclass(frozen=True)
class FitSettings:
    """How a table is built: every entry timed, or whole subnets timed and the rest fitted."""

    fit: bool = option(False, switch=True,
                       help="time whole subnets block by block and fit a model per block kind "
                            f"(default above {AUTO_FIT_ABOVE:,} distinct blocks)")
    exhaustive: bool = option(False, switch=True,
                              help=f"time every distinct block alone (default up to {AUTO_FIT_ABOVE:,})")
    budget_minutes: float = option(10.0, above=0.0,
                                   help="fitted builds: time spent measuring after which no more subnets "
                                        "are sampled (default 10)")
    first_sample: Optional[int] = option(None, min=4, metavar="N",
                                         help="whole subnets in the first, stratified sample (default 4 per "
                                              "resolution, 24..80); exhaustive builds fit their correction on them")
    seed: int = option(0, flag=None, min=0, help="seed of the sampled subnets")

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.fit and self.exhaustive:
            raise UserError("--fit and --exhaustive exclude each other: pass one")

    def method(self, configs: int) -> str:
        """``"fitted"`` or ``"exhaustive"`` for a space of ``configs`` distinct blocks."""
        if self.exhaustive or self.fit:
            return "exhaustive" if self.exhaustive else "fitted"
        return "fitted" if configs > AUTO_FIT_ABOVE else "exhaustive"


def _compatible(table: LatencyTable, model_config: Mapping[str, Any], settings: MeasureSettings,
                method: str) -> str | None:
    """Why an existing partial table cannot be resumed with these settings (None if it can)."""
    if table.device != settings.device:
        return f"it was measured on {table.device}"
    if table.batch != settings.batch:
        return f"it was measured at batch {table.batch}"
    if settings.device == "cpu" and table.device_info.get("threads") != torch.get_num_threads():
        return f"it was measured with {table.device_info.get('threads')} CPU threads"
    if table.settings.get("clock", "wall") != settings.clock:
        return f"it was measured with --clock {table.settings.get('clock', 'wall')}"
    if table.method != method:
        return f"it was built {'--fit' if table.method == 'fitted' else '--exhaustive'}"
    for key in ("arch", "small_input", "num_classes", "in_chans", "resolutions", "width_range"):
        if table.model_config.get(key) != model_config.get(key):
            return f"it is for {key}={table.model_config.get(key)!r}"
    return None


@contextlib.contextmanager
def _cpu_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` torch CPU threads (None: the current count), restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _start_table(net: Supernet, settings: MeasureSettings, path: str | os.PathLike | None, force: bool,
                 method: str) -> LatencyTable:
    """The partial table at ``path`` to resume, else an empty one; one measured otherwise is a UserError."""
    config = net.config.to_dict()
    if path is not None and not force and pathlib.Path(path).exists():
        old = LatencyTable.load(path)
        reason = _compatible(old, config, settings, method)
        if reason:
            raise UserError(f"{path} exists but cannot be resumed ({reason}): pass --force to rebuild it "
                            "or choose another -o")
        old.complete = False
        return old
    return LatencyTable({}, devices.describe_device(settings.device), config, settings.batch, settings.to_dict(),
                        complete=False, source=str(path) if path is not None else None, method=method)


class _Build:
    """One build session: the table, where it is saved, the time spent (across resumes), progress."""

    def __init__(self, net: Supernet, table: LatencyTable, settings: MeasureSettings,
                 path: str | os.PathLike | None, progress: bool) -> None:
        self.net, self.table, self.settings, self.path, self.progress = net, table, settings, path, progress
        self._start, self._before = time.perf_counter(), float(table.build.get("seconds", 0.0))

    def seconds(self) -> float:
        """Seconds spent building this table, earlier sessions included."""
        return self._before + time.perf_counter() - self._start

    def save(self) -> None:
        self.table.build["seconds"] = round(self.seconds(), 3)
        if self.path is not None:
            self.table.save(self.path)

    def say(self, text: str) -> None:
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(text)

    def time_subnets(self, subnets: Sequence[Subnet], status: Callable[[], str] = lambda: "") -> None:
        """Time ``subnets`` block by block in chunks of :data:`CHUNK_SUBNETS`, saving after each."""
        from tqdm.auto import tqdm

        done = {t.subnet for t in self.table.timings}
        pending = [s for s in dict.fromkeys(subnets) if s not in done]
        bar = tqdm(total=len(pending) * self.settings.rounds, desc="timing subnets", unit="subnet-round",
                   disable=not self.progress or not pending)
        try:
            for start in range(0, len(pending), CHUNK_SUBNETS):
                chunk = pending[start:start + CHUNK_SUBNETS]
                bar.set_postfix_str(f"{len(self.table.timings)} timed{status()}")
                self._time_chunk(chunk, lambda _, n=len(chunk): bar.update(n))
                self.save()
        finally:
            bar.close()

    def _time_chunk(self, chunk: list[Subnet], on_round: Callable[[int], None]) -> None:
        """Time ``chunk`` with the table's reference subnets, and add its timings at the pace of the first chunk.

        The first subnets timed (the smallest and the largest) are timed again with every later
        chunk; their ratio to their first timing is the machine's pace now (a shared machine runs
        slower under load), and the chunk's timings are divided by it, so that chunks timed minutes
        apart fit one model. On a quiet machine the pace stays at 1.
        """
        references = self.table.timings[:PACE_REFERENCES]
        extra = [t.subnet for t in references if t.subnet not in chunk]
        samples = time_in_context(self.net, chunk + extra, self.settings, on_round=on_round)
        timings = summarize_timings(samples, chunk + extra, self.settings.statistic)
        pace = 1.0
        if extra:
            ratios = [again.total_ms / first.total_ms for again, first in zip(timings[len(chunk):], references)]
            pace = float(np.exp(np.mean(np.log(ratios))))
            self.table.build.setdefault("pace", []).append(round(pace, 4))
        self.table.timings += [t.scaled(1 / pace) for t in timings[:len(chunk)]]


def _measure_entries(build: _Build, pending: list[BlockConfig], save_every: int,
                     raw_samples: dict[str, list[float]] | None) -> None:
    """Measure ``pending`` into the table in chunks of ``save_every``, saving after each."""
    from tqdm.auto import tqdm

    settings = build.settings
    bar = tqdm(total=len(pending) * settings.rounds, desc="measuring blocks", unit="timing",
               disable=not build.progress or not pending)
    # Chunks bound the work lost to an interruption; rounds run within a chunk.
    try:
        for start in range(0, len(pending), save_every):
            chunk = pending[start:start + save_every]
            calls = {c.key: config_call(c, settings) for c in chunk}
            samples = timing.time_calls(calls, settings, on_round=bar.update)
            build.table.entries.update({key: timing.summarize(v, settings.statistic) for key, v in samples.items()})
            if raw_samples is not None:
                raw_samples.update(samples)
            build.save()
    finally:
        bar.close()


def _build_exhaustive(build: _Build, plan: FitSettings, save_every: int,
                      raw_samples: dict[str, list[float]] | None) -> None:
    configs = enumerate_configs(build.net.layout, build.net.space)
    pending = [c for key, c in configs.items() if key not in build.table.entries]
    _measure_entries(build, pending, save_every, raw_samples)
    space = build.net.space
    build.time_subnets(stratified_subnets(space, plan.first_sample or first_sample_size(space), plan.seed))
    refit_exhaustive(build.net, build.table)
    build.table.complete = all(key in build.table.entries for key in configs)


def _round_record(build: _Build, errors: Mapping[str, Any]) -> dict[str, Any]:
    correction = build.table.correction
    return {"subnets": len(build.table.timings), "seconds": round(build.seconds(), 1),
            "block_mape": round(errors["weighted_mape"], 3), "e2e_mape": round(correction.heldout.get("mape", 0.0), 3),
            "e2e_within_10pct": round(correction.heldout.get("within_10pct", 0.0), 4)}


def _stalled(rounds: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the last :data:`STALL_ROUNDS` rounds each failed to improve on the best error before them."""
    if len(rounds) <= STALL_ROUNDS:
        return False
    errors = [r["block_mape"] for r in rounds]
    best_before = min(errors[:-STALL_ROUNDS])
    return all(e > best_before * (1 - MIN_GAIN) for e in errors[-STALL_ROUNDS:])


def _build_fitted(build: _Build, plan: FitSettings) -> None:
    net, table = build.net, build.table
    budget = plan.budget_minutes * 60

    def status() -> str:  # the progress bar's measured count is the bar's own
        rounds = table.build.get("rounds") or [{}]
        error = f", end-to-end error {rounds[-1]['e2e_mape']:.1f} %" if "e2e_mape" in rounds[-1] else ""
        return f"{error}, {max(budget - build.seconds(), 0) / 60:.1f} min left"

    first = stratified_subnets(net.space, plan.first_sample or first_sample_size(net.space), plan.seed)
    build.time_subnets(first, status)
    table.build["first_sample"] = len(first)
    rounds = table.build.setdefault("rounds", [])
    while True:
        errors = refit_fitted(net, table, len(first))
        if not rounds or rounds[-1]["subnets"] != len(table.timings):
            rounds.append(_round_record(build, errors))
        build.save()
        last = rounds[-1]
        build.say(f"{last['subnets']} subnets timed: held-out block error {last['block_mape']:.2f} %, "
                  f"end to end {last['e2e_mape']:.2f} % ({last['e2e_within_10pct']:.0%} within +-10 %), "
                  f"{max(budget - build.seconds(), 0) / 60:.1f} min left")
        chunk_seconds = (rounds[-1]["seconds"] - rounds[-2]["seconds"]) if len(rounds) > 1 else 0.0
        if _stalled(rounds) or build.seconds() + chunk_seconds > budget:
            break
        new = targeted_subnets(net.space, errors["anchors"], errors["weights"], CHUNK_SUBNETS,
                               plan.seed + len(rounds), {t.subnet for t in table.timings})
        if not new:
            break
        build.time_subnets(new, status)
    table.complete = True


def build_table(net: Supernet, settings: MeasureSettings, path: str | os.PathLike | None = None,
                force: bool = False, save_every: int = 40, progress: bool = True,
                raw_samples: dict[str, list[float]] | None = None, plan: FitSettings | None = None) -> LatencyTable:
    """Build the latency table of ``net``'s search space on ``settings.device``.

    ``plan`` chooses exhaustive or fitted (by default: by the number of distinct blocks) and the
    fitted build's budget. With ``path``, the partial table is saved as it grows (exhaustive:
    every ``save_every`` entries) and an existing compatible table at ``path`` is resumed unless
    ``force``. CPU threads are set for the build and restored afterwards. ``raw_samples``, if
    given, receives every entry's timed samples (ms) of an exhaustive build.
    """
    plan = plan or FitSettings()
    method = plan.method(count_configs(net.layout, net.space))
    with _cpu_threads(settings.threads):
        build = _Build(net, _start_table(net, settings, path, force, method), settings, path, progress)
        build.table.build.update(space_entries=count_configs(net.layout, net.space),
                                 budget_minutes=plan.budget_minutes if method == "fitted" else None)
        try:
            if method == "exhaustive":
                _build_exhaustive(build, plan, save_every, raw_samples)
            else:
                _build_fitted(build, plan)
        finally:
            build.save()
        return build.table

