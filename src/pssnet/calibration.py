"""BatchNorm recalibration: re-estimate a subnet's BN statistics on a few training batches.

A supernet's running statistics are a blend over all the subnets it trained, and fit none of
them. Before a subnet is evaluated or deployed, its statistics are reset and re-estimated as a
cumulative average over a few batches (``momentum=None``), with the weights untouched.
"""

from __future__ import annotations

import itertools
import numbers
from typing import Iterable, Optional

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import UserError


class BatchTypeError(UserError, TypeError):
    """A calibration batch of the wrong type: the caller's mistake, still a ``TypeError``."""


class BatchCountError(UserError, ValueError):
    """A number of calibration batches that is not a whole number >= 1: still a ``ValueError``."""


def _check_count(num_batches: Optional[int]) -> None:
    if num_batches is None:
        return
    if isinstance(num_batches, bool) or not isinstance(num_batches, numbers.Integral) or num_batches < 1:
        raise BatchCountError(f"recalibrate_bn: num_batches must be a whole number >= 1 (or None: every batch), "
                              f"got {num_batches!r}")


def _images_of(batch) -> torch.Tensor:
    """The input tensor of a batch given as ``x`` or as ``(x, y, ...)``."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise BatchTypeError(f"recalibrate_bn: each batch must be a tensor or an (inputs, labels) pair, "
                         f"got {type(batch).__name__}")


# Not swa_utils.update_bn: it restores only the root's train mode (not each module's), and not on error.
@torch.no_grad()
def recalibrate_bn(
    net: nn.Module,
    batches: Iterable,
    num_batches: Optional[int] = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Reset every BatchNorm's statistics and re-estimate them on ``batches``.

    ``batches`` yields tensors or ``(inputs, labels)`` pairs (a ``DataLoader`` works); at most
    ``num_batches`` are used. For a :class:`~pssnet.Supernet`, the statistics are those of its
    active subnet. Each module's train/eval mode and each BatchNorm's momentum are restored;
    only the running statistics change. Returns ``net``. A ``num_batches`` below 1 raises
    :class:`BatchCountError` before anything changes.
    """
    _check_count(num_batches)
    norms = [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return net
    if device is None:
        device = next(iter(net.parameters())).device
    modes = [(m, m.training) for m in net.modules()]
    momenta = [bn.momentum for bn in norms]
    seen = 0
    try:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        net.train()
        source = batches if num_batches is None else itertools.islice(batches, int(num_batches))
        for batch in source:
            net(_images_of(batch).to(device, non_blocking=True))
            seen += 1
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        for module, training in modes:
            module.training = training
    if seen == 0:
        raise UserError("BN recalibration got no batches: pass a non-empty loader and num_batches >= 1")
    return net


def bn_layers(net: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The BatchNorm layers of ``net`` in a fixed order, with their qualified names."""
    return [(name, m) for name, m in net.named_modules() if isinstance(m, _BatchNorm)]


def bn_statistics(net: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every BatchNorm's running mean and variance, keyed by layer name."""
    return {name: (m.running_mean.detach().clone(), m.running_var.detach().clone())
            for name, m in bn_layers(net) if m.running_mean is not None}
