"""A bounded pool of good subnets for one budget target, with EMA-smoothed scores."""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..space import Subnet


class SubnetPool:
    """Up to ``size`` subnets with scores; a repeated subnet's score is an EMA, the worst leaves.

    The pool compares subnets as given: :class:`~pssnet.sampling.PSSSampler` enters canonical
    subnets only (:func:`~pssnet.layout.canonicalize`), so each entry is a distinct network.
    Entries are kept in a canonical order (by subnet key) so that draws depend only on the
    pool's contents, never on insertion history: a pool restored from a checkpoint or held by
    another process draws exactly the same subnets.
    """

    def __init__(self, size: int = 50, ema: float = 0.9) -> None:
        if size < 1:
            raise ValueError(f"pool size must be >= 1, got {size}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"EMA factor must be in [0, 1), got {ema}")
        self.size, self.ema = size, ema
        self._scores: dict[Subnet, float] = {}

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, subnet: Subnet) -> bool:
        return subnet in self._scores

    @property
    def full(self) -> bool:
        return len(self._scores) >= self.size

    def score(self, subnet: Subnet) -> float:
        return self._scores[subnet]

    def update(self, subnet: Subnet, score: float) -> None:
        """Enter ``subnet`` with ``score``, or blend it into its EMA; evict the lowest if over size."""
        score = float(score)
        old = self._scores.get(subnet)
        self._scores[subnet] = score if old is None else self.ema * old + (1.0 - self.ema) * score
        if len(self._scores) > self.size:
            del self._scores[min(self._scores, key=lambda s: (self._scores[s], s.key))]

    def entries(self) -> list[tuple[Subnet, float]]:
        """(subnet, score) pairs, best first (ties by subnet key)."""
        return sorted(self._scores.items(), key=lambda item: (-item[1], item[0].key))

    def probabilities(self, temperature: float) -> tuple[list[Subnet], np.ndarray]:
        """Subnets in canonical order and their ``softmax(score / temperature)`` probabilities."""
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        subnets = sorted(self._scores, key=lambda s: s.key)
        logits = np.asarray([self._scores[s] for s in subnets], dtype=np.float64) / temperature
        weights = np.exp(logits - logits.max())
        return subnets, weights / weights.sum()

    def draw(self, rng: np.random.Generator, temperature: float) -> Subnet:
        """One subnet drawn with probability ``softmax(score / temperature)``."""
        if not self._scores:
            raise ValueError("cannot draw from an empty pool")
        subnets, probs = self.probabilities(temperature)
        # Inverse-CDF with one uniform number: the same rng consumption whatever the pool holds.
        index = int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right"))
        return subnets[min(index, len(subnets) - 1)]

    def state_dict(self) -> list[dict[str, Any]]:
        """Plain data, best first: ``[{"subnet": {...}, "score": float}, ...]``."""
        return [{"subnet": s.to_dict(), "score": score} for s, score in self.entries()]

    def load_state_dict(self, entries: Iterable[dict[str, Any]]) -> None:
        self._scores = {Subnet.from_dict(e["subnet"]): float(e["score"]) for e in entries}
        if len(self._scores) > self.size:
            raise ValueError(f"pool state holds {len(self._scores)} subnets, more than its size {self.size}")
