"""Fixed evaluation image sets, decoded once: the batches every candidate subnet is calibrated on and scored on.

The calibration, held-out and test images are fixed and go through the data set's
deterministic evaluation transform, so every candidate would decode, resize and normalise the
very same images again. :class:`Batches` keeps them from its first pass on, as uint8 when the
data set's transform ends with ``ToDtype(float32, scale=True), Normalize`` (the pixels before
normalisation are recovered exactly, which is checked batch by batch), and normalises each
batch again when it is used. A set that would exceed ``cache_bytes`` is streamed every pass.

The images are prepared at the data set's one image size; a subnet's own resolution is applied
inside the network (``Supernet`` resizes its input), so one prepared copy serves every candidate.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

# Bytes of prepared images one set may keep in memory; larger sets are streamed every pass.
CACHE_BYTES = 1 << 30

Batch = tuple[torch.Tensor, torch.Tensor]


class Normalisation:
    """The ``ToDtype(float32, scale=True), Normalize`` tail of a transform, applied to uint8 batches."""

    def __init__(self, to_float: v2.ToDtype, normalize: v2.Normalize) -> None:
        self.transform = v2.Compose([to_float, normalize])
        self.mean = torch.tensor(normalize.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(normalize.std, dtype=torch.float32).view(-1, 1, 1)

    @classmethod
    def of(cls, dataset: Dataset) -> Optional["Normalisation"]:
        """The tail of ``dataset``'s transform (looking through ``Subset``), or None without one."""
        while isinstance(dataset, Subset):
            dataset = dataset.dataset
        transform = getattr(dataset, "transform", None)
        steps = transform.transforms if isinstance(transform, v2.Compose) else []
        if len(steps) < 2:
            return None
        to_float, normalize = steps[-2:]
        if (isinstance(to_float, v2.ToDtype) and to_float.dtype == torch.float32 and to_float.scale
                and isinstance(normalize, v2.Normalize)):
            return cls(to_float, normalize)
        return None

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.transform(pixels)

    def undo(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The uint8 pixels that normalise to exactly ``x``, or None where there are none."""
        pixels = (x * self.std + self.mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
        return pixels if torch.equal(self(pixels), x) else None


class Batches:
    """Fixed batches of a dataset (same order every pass), kept in memory after the first pass
    when they fit ``cache_bytes`` (0 streams every pass)."""

    def __init__(self, dataset: Dataset, batch_size: int, limit_batches: Optional[int] = None,
                 cache_bytes: int = CACHE_BYTES) -> None:
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        self.limit = limit_batches
        self.count = len(dataset) if limit_batches is None else min(len(dataset), limit_batches * batch_size)
        self.cache_bytes = cache_bytes
        self._normalisation = Normalisation.of(dataset)
        # Each entry: (pixels, labels, normalise) where normalise says the pixels are uint8.
        self._cache: Optional[list[tuple[torch.Tensor, torch.Tensor, bool]]] = None
        self._streamed = cache_bytes <= 0  # set once a pass found the set too large to keep

    @property
    def cached(self) -> bool:
        """Whether the batches are held in memory (after a first complete pass)."""
        return self._cache is not None

    def _stream(self) -> Iterator[Batch]:
        for i, (x, y) in enumerate(self.loader):
            if self.limit is not None and i >= self.limit:
                return
            yield x, y

    def _compact(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        pixels = self._normalisation.undo(x) if self._normalisation is not None else None
        return (x, False) if pixels is None else (pixels, True)

    def _stream_and_keep(self) -> Iterator[Batch]:
        kept: Optional[list[tuple[torch.Tensor, torch.Tensor, bool]]] = []
        size = 0
        for x, y in self._stream():
            if kept is not None:
                pixels, normalise = self._compact(x)
                size += pixels.numel() * pixels.element_size()
                # The first batches tell the size per image; give up as soon as the whole set would not fit.
                if max(size, size * self.count // (len(kept) * self.loader.batch_size + len(y))) > self.cache_bytes:
                    kept, self._streamed = None, True
                else:
                    kept.append((pixels, y, normalise))
            yield x, y
        if kept is not None:
            self._cache = kept

    def __iter__(self) -> Iterator[Batch]:
        if self._cache is not None:
            return ((self._normalisation(x) if normalise else x, y) for x, y, normalise in self._cache)
        return self._stream() if self._streamed else self._stream_and_keep()
