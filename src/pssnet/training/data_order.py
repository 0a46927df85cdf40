"""Data order of a run: which samples it trains on (the training images minus those kept out for
``pssnet eval``'s selection), in what order an epoch visits them, with which augmentation seed.

Exact resume rests on this: the order of an epoch is a pure function of ``(seed, epoch)`` (so a
resumed run skips the batches already done without loading them), and every sample's
augmentation is seeded from ``(seed, epoch, position)`` (so it does not depend on workers or on
what came before).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from ..data import split_train


class EpochView(Dataset):
    """This rank's remaining samples of one epoch, each with its own augmentation seed."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, seeds: np.ndarray) -> None:
        self.dataset, self.indices, self.seeds = dataset, indices, seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        # A private RNG stream per sample; the global generator is left untouched. Only the CPU
        # generator, saved and restored by hand: torch.manual_seed would also (re)seed CUDA's and
        # fork_rng looks for an accelerator, together 1 ms a sample.
        generator = torch.default_generator
        state = generator.get_state()
        generator.manual_seed(int(self.seeds[i]))
        try:
            return self.dataset[int(self.indices[i])]
        finally:
            generator.set_state(state)


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of ``epoch`` (the same on every rank and after a resume)."""
    return np.random.Generator(np.random.PCG64([seed, epoch, 0xDA7A])).permutation(num_samples)


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """The augmentation seeds of the samples at ``positions`` of ``epoch``'s order."""
    base = ((seed * 1_000_003 + epoch) * 10_000_019) % 2**62  # Python ints: no int64 overflow
    return (np.int64(base) + positions) % 2**62


def without_holdout(train: Dataset, holdout: int, seed: int) -> tuple[Dataset, Optional[dict[str, int]]]:
    """The training images minus those kept out for selection (``holdout`` of them, at most a
    tenth), and the run's record that names them (``{"count", "seed"}``; None when none are)."""
    count = min(holdout, len(train) // 10)
    if count == 0:
        return train, None
    kept_out = set(split_train(len(train), count, 0, seed)[0])
    rest = [i for i in range(len(train)) if i not in kept_out]
    return Subset(train, rest), {"count": count, "seed": seed}


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank ``rank`` while training: ranks share weights and subnets, but draw
    their own dropout masks and other torch randomness."""
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1, np.uint64)[0])
