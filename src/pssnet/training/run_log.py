"""What a run reports while it trains: metrics.jsonl, TensorBoard and the progress-bar postfix."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import numpy as np

from ..fileio import write_text_atomic
from ..sampling import SubnetSampler
from .config import TrainConfig
from .distributed import DistContext
from .run_dir import truncate_metrics


class RunLogger:
    """metrics.jsonl, TensorBoard and the progress-bar postfix (rank 0 only)."""

    def __init__(self, out: pathlib.Path, config: TrainConfig, ctx: DistContext, iteration: int) -> None:
        self.config, self.ctx = config, ctx
        self.metrics_path = out / "metrics.jsonl"
        self.window: list[float] = []
        self.tick, self.tick_iteration = time.perf_counter(), iteration
        self.writer = None
        if not ctx.is_main:
            return
        out.mkdir(parents=True, exist_ok=True)
        truncate_metrics(self.metrics_path, iteration)  # drop rows written after the checkpoint we resume from
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / "tb"), purge_step=iteration + 1 if iteration else None)

    def write_config(self, config: dict[str, Any]) -> None:
        path = self.metrics_path.with_name("config.json")
        write_text_atomic(path, json.dumps(config, indent=2) + "\n")

    def record(self, row: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def step(self, iteration: int, epoch: int, result, draw, lr: float, sampler: SubnetSampler, bar,
             force: bool = False) -> None:
        if not self.ctx.is_main:
            return
        bar.update(1)
        self.window.append(result.acc_largest)
        if iteration % self.config.log_every and not force:
            return
        now = time.perf_counter()
        images = (iteration - self.tick_iteration) * self.config.global_batch(self.ctx.world_size)
        speed = images / max(now - self.tick, 1e-9)
        self.tick, self.tick_iteration = now, iteration
        row = {"iteration": iteration, "epoch": epoch, "lr": lr, "loss_largest": result.loss_largest,
               "loss_sampled": result.loss_sampled, "loss_smallest": result.loss_smallest,
               "acc_largest": result.acc_largest, "score": result.score, "images_per_s": speed,
               "pool_fill": sampler.pool_fill(), "kind": draw.kind, "target": draw.target,
               "source": draw.source, "subnet": draw.subnet.key}
        self.record(row)
        for name in ("loss_largest", "loss_sampled", "loss_smallest", "acc_largest", "score", "lr",
                     "images_per_s", "pool_fill"):
            self.writer.add_scalar(f"train/{name}", row[name], iteration)
        bar.set_postfix(loss=f"{result.loss_largest:.3f}", acc=f"{np.mean(self.window):.3f}",
                        img_s=f"{speed:.0f}", pools=f"{100 * row['pool_fill']:.0f}%", refresh=False)
        self.window.clear()

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
