"""One sandwich-rule training iteration with in-place distillation and metric reuse.

1. Largest subnet: cross-entropy on the labels, backward; its detached logits are the teacher.
2. The sampled subnet and the smallest: KL(teacher || student) on softmax outputs, backward.
3. One optimizer step.
The sampled subnet's score, ``-CE(logits, labels)``, comes from the logits of its training
forward in step 2, so no extra forward pass is needed (the reference runs one).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..space import Subnet
from ..supernet import Supernet

def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between softmax outputs, averaged over the batch (float32)."""
    return F.kl_div(F.log_softmax(student_logits.float(), dim=1), F.log_softmax(teacher_logits.float(), dim=1),
                    reduction="batchmean", log_target=True)


@dataclass
class StepResult:
    """Scalars of one iteration (averaged across processes when distributed)."""

    loss_largest: float  # cross-entropy of the largest subnet
    loss_sampled: float  # distillation loss of the sampled subnet
    loss_smallest: float  # distillation loss of the smallest subnet
    acc_largest: float  # top-1 accuracy of the largest subnet on this batch
    score: float  # -CE of the sampled subnet: its pool score

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "StepResult":
        return cls(*(float(v) for v in values.tolist()))


class SandwichStep:
    """Runs :meth:`__call__` once per batch on ``model`` (a :class:`Supernet` or DDP around one).

    ``reduce_metrics`` averages the metric vector across processes (identity when single).
    ``extra_forward_score=True`` scores with an additional no-grad forward, as the reference
    implementation does; it exists for benchmarks and tests of the reuse.
    """

    def __init__(self, model: nn.Module, supernet: Supernet, optimizer: torch.optim.Optimizer,
                 label_smoothing: float = 0.0, amp: bool = False, channels_last: bool = False,
                 scaler: Optional["torch.amp.GradScaler"] = None,
                 reduce_metrics: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 extra_forward_score: bool = False) -> None:
        self.model, self.supernet, self.optimizer = model, supernet, optimizer
        self.label_smoothing = label_smoothing
        self.amp, self.channels_last, self.scaler = amp, channels_last, scaler
        self.reduce_metrics = reduce_metrics
        self.extra_forward_score = extra_forward_score
        self.largest, self.smallest = supernet.space.largest(), supernet.space.smallest()

    def _autocast(self, device: torch.device):
        if not self.amp:
            return contextlib.nullcontext()
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        return torch.autocast(device.type, dtype=dtype)

    def _no_sync(self, last: bool):
        # DDP all-reduces gradients only on the last of the three backward passes.
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _forward(self, subnet: Subnet, images: torch.Tensor) -> torch.Tensor:
        self.supernet.set_subnet(subnet)
        with self._autocast(images.device):
            return self.model(images)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, sampled: Subnet) -> StepResult:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.optimizer.zero_grad(set_to_none=True)

        with self._no_sync(last=False):
            logits = self._forward(self.largest, images)
            loss_largest = F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
            self._backward(loss_largest)
        teacher = logits.detach()
        acc_largest = (teacher.argmax(dim=1) == labels).float().mean()

        with self._no_sync(last=False):
            logits = self._forward(sampled, images)
            loss_sampled = distill_loss(logits, teacher)
            self._backward(loss_sampled)
        if self.extra_forward_score:
            with torch.no_grad():
                score = -F.cross_entropy(self._forward(sampled, images).float(), labels)
        else:
            score = -F.cross_entropy(logits.detach().float(), labels)

        with self._no_sync(last=True):
            loss_smallest = distill_loss(self._forward(self.smallest, images), teacher)
            self._backward(loss_smallest)

        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        metrics = torch.stack([loss_largest.detach(), loss_sampled.detach(), loss_smallest.detach(),
                               acc_largest, score]).float()
        if self.reduce_metrics is not None:
            metrics = self.reduce_metrics(metrics)
        return StepResult.from_tensor(metrics.cpu())
