"""Data order of a run: which samples an epoch visits, in what order, with which augmentation seed.

Exact resume rests on this: the order of an epoch is a pure function of ``(seed, epoch)`` (so a
resumed run skips the batches already done without loading them), and every sample's
augmentation is seeded from ``(seed, epoch, position)`` (so it does not depend on workers or on
what came before).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


class EpochView(Dataset):
    """This rank's remaining samples of one epoch, each with its own augmentation seed."""

    def __init__(self, dataset: Dataset, indices: np.ndarray, seeds: np.ndarray) -> None:
        self.dataset, self.indices, self.seeds = dataset, indices, seeds

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        # A private RNG stream per sample; the global generator is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seeds[i]))
            return self.dataset[int(self.indices[i])]


def epoch_order(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of ``epoch`` (the same on every rank and after a resume)."""
    return np.random.Generator(np.random.PCG64([seed, epoch, 0xDA7A])).permutation(num_samples)


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank ``rank`` while training: ranks share weights and subnets, but draw
    their own dropout masks and other torch randomness."""
    return int(np.random.SeedSequence([seed, rank, 0x5EED]).generate_state(1, np.uint64)[0])
