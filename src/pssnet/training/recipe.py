"""The optimisation recipe's building blocks: which weights decay, and the learning-rate schedule."""

from __future__ import annotations

import math
from typing import Any

from torch import nn


def weight_decay_groups(net: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay conv (not depthwise) and linear weights; not depthwise convs, BatchNorm or biases."""
    decay_ids = {id(m.weight) for m in net.modules()
                 if (isinstance(m, nn.Conv2d) and not (m.groups > 1 and m.groups == m.in_channels))
                 or isinstance(m, nn.Linear)}
    decay = [p for p in net.parameters() if id(p) in decay_ids]
    rest = [p for p in net.parameters() if id(p) not in decay_ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def cosine_factor(iteration: int, total: int, warmup: int) -> float:
    """Linear warm-up for ``warmup`` iterations, then cosine decay to 0 at ``total``."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (iteration - warmup) / max(1, total - warmup)))
