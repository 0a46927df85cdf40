"""Process-group plumbing for ``torchrun`` runs (gloo on CPU, NCCL on GPU).

Every rank seeds its subnet sampler identically, so all ranks draw the same subnets without
communication; only the per-step metrics (including the pool score) are averaged.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..devices import resolve_device


@dataclass
class DistContext:
    """Rank, world size and device of this process (a single process when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Average ``tensor`` over all ranks (the tensor itself when single-process)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor / self.world_size

    def maximum(self, values: list[int]) -> list[int]:
        """The element-wise maximum of ``values`` over all ranks (how ranks agree on a decision)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [int(v) for v in tensor.tolist()]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (plain data), in rank order."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


def init_distributed(device_name: str = "auto", timeout_minutes: float = 10.0) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def digest(value: Any) -> str:
    """Short SHA-256 of plain data (JSON, keys sorted); equal data gives equal digests."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
