"""The training state: everything that changes while a run trains, and what a checkpoint holds.

:meth:`TrainState.state_dict` is the checkpoint's content (format ``pssnet-checkpoint/1``, see
``checkpoint.py``); :meth:`TrainState.load_state_dict` puts a checkpoint's mutable part back.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..constraints import Constraint
from ..errors import UserError
from ..sampling import SpaceMap, SubnetSampler
from ..space import Subnet
from ..supernet import Supernet
from .checkpoint import capture_rng_state, restore_rng_state
from .config import TrainConfig


def maps_to_state(maps: Mapping[str, SpaceMap]) -> dict[str, dict[str, Any]]:
    """Space maps as tensors and strings (the checkpoint's ``maps``)."""
    return {kind: {k: torch.from_numpy(np.asarray(v)) if k != "meta" else str(v) for k, v in m.to_arrays().items()}
            for kind, m in maps.items()}


def maps_from_state(state: Mapping[str, Mapping[str, Any]]) -> dict[str, SpaceMap]:
    """The inverse of :func:`maps_to_state`."""
    try:
        return {kind: SpaceMap.from_arrays({k: (v.numpy() if torch.is_tensor(v) else v) for k, v in a.items()})
                for kind, a in state.items()}
    except ValueError as exc:  # a map of an older pssnet: rebuilding it would change what the run trains
        raise UserError(f"the checkpoint's space map cannot be used ({exc}); finish this run with the pssnet "
                        "version that started it, or start a new run") from None


@dataclass
class TrainState:
    """A run's mutable training state (weights, optimiser, scheduler, scaler, sampler, iteration,
    subnet-sequence digest; the RNGs are the process's own) and the run facts saved beside it."""

    config: TrainConfig
    net: Supernet
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: Optional["torch.amp.GradScaler"]
    sampler: SubnetSampler
    constraints: list[Constraint]
    luts: dict[str, Any]  # constraint kind -> LatencyTable
    maps: dict[str, SpaceMap]
    holdout: Optional[dict[str, int]]  # {"count", "seed"} of data.split_train, or None
    iteration: int = 0
    sequence: bytes = b""  # chained SHA-256 of the subnets trained so far

    def advance(self, subnet: Subnet) -> None:
        """Count one finished iteration that trained ``subnet``."""
        self.iteration += 1
        self.sequence = hashlib.sha256(self.sequence + subnet.key.encode()).digest()

    def state_dict(self, rng_by_rank: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
        """The checkpoint's content: tensors and plain data only. ``rng_by_rank``: every rank's RNG
        states (multi-process runs, whose ranks draw different dropout masks)."""
        extra = {"rng_by_rank": rng_by_rank} if rng_by_rank else {}
        return {**extra,
            "iteration": self.iteration, "config": self.config.to_dict(), "model_config": self.net.config.to_dict(),
            "state_dict": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else {},
            "sampler": self.sampler.state_dict(), "rng": capture_rng_state(),
            "constraints": [x.to_dict() for x in self.constraints],
            "luts": {kind: t.to_dict() for kind, t in self.luts.items()},
            "maps": maps_to_state(self.maps),
            "sequence": self.sequence.hex(), "holdout": self.holdout,
        }

    def load_state_dict(self, checkpoint: Mapping[str, Any], rank: int = 0) -> None:
        """Continue from ``checkpoint``: weights, optimiser, scheduler, scaler, sampler, RNGs (of
        process ``rank``), iteration and sequence. (Its config and maps are read before.)"""
        self.net.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint.get("scaler"):
            self.scaler.load_state_dict(checkpoint["scaler"])
        self.sampler.load_state_dict(checkpoint["sampler"])
        by_rank = checkpoint.get("rng_by_rank")
        restore_rng_state(by_rank[rank] if by_rank else checkpoint["rng"])
        self.iteration = int(checkpoint["iteration"])
        self.sequence = bytes.fromhex(checkpoint["sequence"])
