"""Building a latency table: measure every block configuration of a search space on this device.

Building is resumable: the partial table is written atomically every few entries and measured
keys are skipped on restart. A complete table gets its per-network overhead calibrated on a
few whole subnets.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import statistics
from typing import Any, Callable, Iterator, Mapping

import torch

from .. import devices, timing
from ..errors import UserError
from ..space import SearchSpace, Subnet
from ..supernet import Supernet, extract_subnet
from ..timing import MeasureSettings
from .blocks import BlockConfig, config_call, enumerate_configs
from .table import LatencyTable


def _compatible(table: LatencyTable, model_config: Mapping[str, Any], settings: MeasureSettings) -> str | None:
    """Why an existing partial table cannot be resumed with these settings (None if it can)."""
    if table.device != settings.device:
        return f"it was measured on {table.device}"
    if table.batch != settings.batch:
        return f"it was measured at batch {table.batch}"
    if settings.device == "cpu" and table.device_info.get("threads") != torch.get_num_threads():
        return f"it was measured with {table.device_info.get('threads')} CPU threads"
    for key in ("arch", "small_input", "num_classes", "in_chans"):
        if table.model_config.get(key) != model_config.get(key):
            return f"it is for {key}={table.model_config.get(key)!r}"
    return None


def calibration_subnets(space: SearchSpace, count: int = 7) -> list[Subnet]:
    """The subnets whose end-to-end latency calibrates a table's per-network overhead:
    the smallest, a middle and the largest one, and seeded random ones up to ``count``."""
    middle = (space.min_width + space.max_width) / 2
    res = space.resolutions
    subnets = [space.smallest(), Subnet(res[len(res) // 2], (middle,) * space.num_stages), space.largest()]
    rng = random.Random(0)
    for _ in range(100 * count):  # tiny spaces may hold fewer distinct subnets than ``count``
        if len(subnets) >= count:
            break
        s = space.sample(rng)
        if s not in subnets:
            subnets.append(s)
    return subnets


def calibrate_overhead(net: Supernet, table: LatencyTable, settings: MeasureSettings) -> float:
    """Median over :func:`calibration_subnets` of (end-to-end latency - sum of block entries), ms.

    Timed exactly like the entries, on the extracted static subnets at their own resolution.
    """
    table.overhead_ms = 0.0
    subnets = calibration_subnets(net.space)
    device = torch.device(settings.device)
    calls = {}
    for s in subnets:
        model = extract_subnet(net, s).eval().to(device)
        x = torch.randn(settings.batch, net.layout.in_chans, s.resolution, s.resolution, device=device)
        calls[s.key] = lambda model=model, x=x: model(x)
    measured = timing.time_calls_ms(calls, settings)
    return float(statistics.median(measured[s.key] - table.predict(net.layout, s) for s in subnets))


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


def _resumed_entries(path: str | os.PathLike | None, force: bool, model_config: Mapping[str, Any],
                     settings: MeasureSettings) -> dict[str, float]:
    """The entries of the partial table at ``path`` to resume (none without one, or with ``force``);
    a table measured otherwise is a UserError."""
    if path is None or force or not pathlib.Path(path).exists():
        return {}
    old = LatencyTable.load(path)
    reason = _compatible(old, model_config, settings)
    if reason:
        raise UserError(f"{path} exists but cannot be resumed ({reason}): pass --force to rebuild it "
                        "or choose another -o")
    return dict(old.entries)


def _measure_entries(table: LatencyTable, pending: list[BlockConfig], settings: MeasureSettings,
                     path: str | os.PathLike | None, save_every: int, on_round: Callable[[int], Any],
                     raw_samples: dict[str, list[float]] | None) -> None:
    """Measure ``pending`` into ``table`` in chunks of ``save_every``, saving to ``path`` after each."""
    # Chunks bound the work lost to an interruption; rounds run within a chunk.
    for start in range(0, len(pending), save_every):
        chunk = pending[start:start + save_every]
        calls = {c.key: config_call(c, settings) for c in chunk}
        samples = timing.time_calls(calls, settings, on_round=on_round)
        table.entries.update({key: timing.summarize(v, settings.statistic) for key, v in samples.items()})
        if raw_samples is not None:
            raw_samples.update(samples)
        if path is not None:
            table.save(path)


def build_table(net: Supernet, settings: MeasureSettings, path: str | os.PathLike | None = None,
                force: bool = False, save_every: int = 40, progress: bool = True,
                raw_samples: dict[str, list[float]] | None = None) -> LatencyTable:
    """Measure every block configuration of ``net``'s search space on ``settings.device``.

    With ``path``, the partial table is saved after every ``save_every`` entries;
    an existing compatible table at ``path`` is resumed (its entries are kept) unless ``force``.
    CPU threads are set for the build and restored afterwards. ``raw_samples``, if given,
    receives every measured entry's timed samples (ms).
    """
    from tqdm.auto import tqdm

    config = net.config.to_dict()
    configs = enumerate_configs(net.layout, net.space)
    with _cpu_threads(settings.threads):
        entries = _resumed_entries(path, force, config, settings)
        table = LatencyTable(entries, devices.describe_device(settings.device), config, settings.batch, settings.to_dict(),
                             complete=False, source=str(path) if path is not None else None)
        pending = [c for key, c in configs.items() if key not in table.entries]
        bar = tqdm(total=len(pending) * settings.rounds, desc="measuring blocks", unit="timing",
                   disable=not progress or not pending)
        try:
            _measure_entries(table, pending, settings, path, save_every, bar.update, raw_samples)
            table.complete = all(key in table.entries for key in configs)
            if table.complete:
                table.overhead_ms = calibrate_overhead(net, table, settings)
        finally:
            bar.close()
            if path is not None:
                table.save(path)
        return table
