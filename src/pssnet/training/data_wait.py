"""Batches on the training device, and the time the training loop spends waiting for them.

The wait of a batch is the host's time blocked in ``next(loader)`` (workers not keeping up, or
the main process preparing samples itself) plus the host-to-device copy. On CUDA the copy is
asynchronous, so its time is taken from CUDA events around it and read once the step has
synchronised anyway (its metrics go to the host): the truth on every iteration, without an
extra synchronisation. Work done on the device after the copy (batched augmentation, JPEG
decoding) counts as the step's, not as waiting.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, Iterator, Optional

import torch


class DataWait:
    """Yields a loader's batches on ``device`` (``stage``: the data's device stage, which copies
    and finishes them; None: plain tensors, copied); :meth:`take` returns the seconds spent
    waiting since the previous call."""

    def __init__(self, device: torch.device, stage: Optional[Callable] = None) -> None:
        self.device, self.stage = device, stage
        self._waited = 0.0
        self._copies: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def batches(self, loader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        start = time.perf_counter()
        batches = iter(loader)  # starts the workers: waiting too
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            self._waited += time.perf_counter() - start
            images, labels = self._copy(batch)
            if self.stage is not None:
                images = self.stage(images)
            yield images, labels
            start = time.perf_counter()

    def _copy(self, batch: Any) -> tuple[Any, torch.Tensor]:
        cuda = self.device.type == "cuda"
        begin = time.perf_counter()
        if cuda:
            self._fold()
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        if self.stage is not None:
            images, labels = self.stage.to_device(batch, self.device)
        else:
            images, labels = (t.to(self.device, non_blocking=True) for t in batch)
        if cuda:
            events[1].record()
            self._copies.append(events)
        else:
            self._waited += time.perf_counter() - begin
        return images, labels

    def _fold(self) -> None:
        """Add the copies that have finished to the wait (all but the latest, as a rule: each
        step ends synchronised), so that ranks that never log keep no growing list."""
        pending = []
        for begin, end in self._copies:
            if end.query():
                self._waited += begin.elapsed_time(end) / 1000
            else:
                pending.append((begin, end))
        self._copies = pending

    def take(self) -> float:
        """Seconds waited since the last call (synchronising on the last copy's end event, which
        the step has passed by the time its metrics are logged)."""
        if self._copies:
            self._copies[-1][1].synchronize()
            self._fold()
        waited, self._waited = self._waited, 0.0
        return waited
