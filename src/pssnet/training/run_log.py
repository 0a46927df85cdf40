"""What a run reports while it trains: metrics.jsonl (written, read back, cut back on a resume),
TensorBoard (when installed) and the progress bar."""

from __future__ import annotations

import json
import pathlib
import sys
import time
from typing import Any, Callable, Mapping, Optional

import numpy as np
from tqdm import tqdm

from ..errors import UserError
from ..fileio import write_text_atomic
from ..sampling import Draw, SubnetSampler
from .config import TrainConfig
from .distributed import DistContext
from .state import TrainState
from .step import StepResult

_SCALARS = ("loss_largest", "loss_sampled", "loss_smallest", "acc_largest", "score", "lr", "images_per_s",
            "pool_fill", "data_wait_fraction")


class _IllTypedRow(ValueError):
    """A metrics line that is a JSON object, with a field of the wrong type."""


def _row(line: str) -> dict[str, Any]:
    """One line of ``metrics.jsonl``; a ValueError saying what is wrong with it."""
    try:
        row = json.loads(line)
    except ValueError:
        raise ValueError("not a JSON object") from None
    if not isinstance(row, dict):
        raise ValueError("not a JSON object")
    iteration = row.get("iteration", 0)  # a resume cuts the log back by it
    if isinstance(iteration, bool) or not isinstance(iteration, int):
        raise _IllTypedRow(f"its iteration is {iteration!r}, not a whole number")
    return row


def read_metrics(path: pathlib.Path) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl``. A torn or ill-typed last line (a write cut short) is
    dropped with a note on stderr; a damaged line elsewhere is a UserError naming the file and the
    line."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(_row(line))
        except ValueError as exc:
            if number == len(lines):
                what = f"last line {number} of {path} ({exc})" if isinstance(exc, _IllTypedRow) else \
                    f"torn last line {number} of {path}"
                print(f"note: dropped the {what}", file=sys.stderr)
                break
            raise UserError(f"{path} line {number} is damaged ({exc}); delete that line to continue") from None
    return rows


def truncate_metrics(path: pathlib.Path, iteration: int) -> None:
    """Keep only the rows of ``metrics.jsonl`` up to ``iteration`` (those a resumed run does not
    write again), rewriting the file atomically."""
    if path.exists():
        kept = [row for row in read_metrics(path) if row.get("iteration", 0) <= iteration]
        write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in kept))


def _tensorboard_writer(log_dir: pathlib.Path, purge_step: Optional[int]) -> Any:
    """A TensorBoard ``SummaryWriter``, or None with a one-line note when tensorboard is not
    installed: it is an optional extra, and metrics.jsonl holds the same numbers."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("note: tensorboard is not installed, so this run writes no TensorBoard log (tb/), only "
              "metrics.jsonl; pip install 'pssnet[tensorboard]' for one", file=sys.stderr, flush=True)
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class RunLogger:
    """metrics.jsonl and TensorBoard (rank 0 only)."""

    def __init__(self, out: pathlib.Path, config: TrainConfig, ctx: DistContext, iteration: int) -> None:
        self.config, self.ctx = config, ctx
        self.metrics_path = out / "metrics.jsonl"
        self.tick, self.tick_iteration = time.perf_counter(), iteration
        self.writer = None
        if not ctx.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.metrics_path, iteration)  # drop rows written after the checkpoint we resume from
        self.writer = _tensorboard_writer(out / "tb", iteration + 1 if iteration else None)

    def write_config(self, config: dict[str, Any]) -> None:
        path = self.metrics_path.with_name("config.json")
        write_text_atomic(path, json.dumps(config, indent=2) + "\n")

    def record(self, row: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def step(self, state: TrainState, epoch: int, result: StepResult, draw: Draw,
             force: bool = False, data_wait: Optional[Callable[[], float]] = None) -> Optional[dict[str, Any]]:
        """Log the iteration ``state`` just finished when one is due (every ``--log-every``, or
        ``force``); returns the row written, or None. ``data_wait``: seconds spent waiting for
        data since its previous call, logged as ``data_wait_fraction`` of the interval."""
        iteration = state.iteration
        if not self.ctx.is_main or (iteration % self.config.log_every and not force):
            return None
        now = time.perf_counter()
        images = (iteration - self.tick_iteration) * self.config.global_batch(self.ctx.world_size)
        elapsed = max(now - self.tick, 1e-9)
        speed = images / elapsed
        self.tick, self.tick_iteration = now, iteration
        row = {"iteration": iteration, "epoch": epoch, "lr": state.optimizer.param_groups[0]["lr"],
               "loss_largest": result.loss_largest, "loss_sampled": result.loss_sampled,
               "loss_smallest": result.loss_smallest, "acc_largest": result.acc_largest, "score": result.score,
               "images_per_s": speed, "pool_fill": state.sampler.pool_fill(), "kind": draw.kind,
               "target": draw.target, "source": draw.source, "subnet": draw.subnet.key}
        if data_wait is not None:
            row["data_wait_fraction"] = min(1.0, data_wait() / elapsed)
        self.record(row)
        if self.writer is not None:
            for name in _SCALARS:
                if name in row:
                    self.writer.add_scalar(f"train/{name}", row[name], iteration)
        return row

    def epoch_end(self, iteration: int, epoch: int, sampler: SubnetSampler) -> None:
        self.record({"event": "epoch", "iteration": iteration, "epoch": epoch, "pool_fill": sampler.pool_fill()})
        if self.writer is not None:
            self.writer.add_scalar("train/epoch", epoch + 1, iteration)
            self.writer.flush()

    def close_writer(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def close(self, iteration: int) -> None:
        self.record({"event": "done", "iteration": iteration})
        if self.writer is not None:
            self.writer.close()


class ProgressBar:
    """One epoch's progress bar (when ``enabled``: rank 0 with --progress). Its postfix shows the
    last metrics row: loss, the mean accuracy of the largest subnet since the row before, images/s
    and pool fill."""

    def __init__(self, enabled: bool, description: str, done: int, total: int) -> None:
        self.enabled = enabled
        self._bar = tqdm(total=total, initial=done, desc=description, disable=not enabled, leave=False,
                         dynamic_ncols=True)
        self._accuracies: list[float] = []

    def advance(self, acc_largest: float, row: Optional[Mapping[str, Any]]) -> None:
        """Count one iteration; ``row``: the metrics row it wrote (:meth:`RunLogger.step`), or None."""
        if not self.enabled:
            return
        self._bar.update(1)
        self._accuracies.append(acc_largest)
        if row is None:
            return
        self._bar.set_postfix(loss=f"{row['loss_largest']:.3f}", acc=f"{np.mean(self._accuracies):.3f}",
                              img_s=f"{row['images_per_s']:.0f}", pools=f"{100 * row['pool_fill']:.0f}%",
                              refresh=False)
        self._accuracies.clear()

    def close(self) -> None:
        self._bar.close()
