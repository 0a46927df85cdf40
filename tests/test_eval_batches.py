"""Evaluation image sets are decoded once and reused, with results identical to decoding every pass."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from torch.utils.data import Subset

from pssnet.data import load_data
from pssnet.data.datasets import ArrayImageDataset
from pssnet.evaluation import Batches, EvalConfig, evaluate_run
from test_deploy_fixtures import tiny_run


@pytest.fixture()
def decoded(monkeypatch) -> Counter:
    """Counts ``(dataset id, index)`` of every image the shipped data set decodes."""
    calls: Counter = Counter()
    original = ArrayImageDataset.__getitem__

    def counting(self, index):
        calls[(id(self), int(index))] += 1
        return original(self, index)

    monkeypatch.setattr(ArrayImageDataset, "__getitem__", counting)
    return calls


def _passes(batches: Batches, n: int) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    return [list(batches) for _ in range(n)]


def test_kept_as_uint8_gives_the_same_batches_and_decodes_each_image_once(decoded):
    data = load_data("fashion-mnist-mini")
    images = Subset(data.train_eval, range(100, 400))
    # Room for the 300 images as uint8 (235,200 bytes) but not as float32 (940,800 bytes).
    kept = _passes(Batches(images, 64, cache_bytes=500_000), 3)
    assert sorted(decoded.values()) == [1] * 300
    decoded.clear()
    streamed = _passes(Batches(images, 64, cache_bytes=0), 3)
    assert sorted(decoded.values()) == [3] * 300
    for a, b in zip(kept, streamed):
        assert len(a) == len(b) == 5
        for (xa, ya), (xb, yb) in zip(a, b):
            assert xa.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_set_too_large_is_streamed_every_pass(decoded):
    data = load_data("fashion-mnist-mini")
    batches = Batches(Subset(data.train_eval, range(300)), 64, cache_bytes=100_000)
    passes = _passes(batches, 2)
    assert not batches.cached and sorted(decoded.values()) == [2] * 300
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(*passes))


def test_a_pass_stopped_early_keeps_nothing(decoded):
    data = load_data("fashion-mnist-mini")
    batches = Batches(Subset(data.train_eval, range(200)), 64)
    next(iter(batches))
    assert not batches.cached
    list(batches)
    assert batches.cached and len(list(batches)) == 4


def test_evaluation_decodes_each_image_once_and_matches_streaming(decoded):
    run, data = tiny_run(num_classes=10), load_data("fashion-mnist-mini")
    config = EvalConfig(top_k=3, calib_batches=2, holdout=40, batch_size=16, progress=False)
    result, evaluator = evaluate_run(run, data, config)
    assert len(evaluator.stats) >= 6  # several candidates reuse the same images
    assert set(decoded.values()) == {1}
    assert sum(1 for (ds, _) in decoded if ds == id(data.train_eval)) == 2 * 16 + 40
    assert sum(1 for (ds, _) in decoded if ds == id(data.test)) == len(data.test)

    decoded.clear()
    again, evaluator_again = evaluate_run(run, data, dataclasses.replace(config, cache_bytes=0))
    assert max(decoded.values()) == len(evaluator_again.stats)  # every candidate decoded the calibration set
    assert again.to_dict() == result.to_dict()
    for subnet, stats in evaluator.stats.items():
        for name, (mean, var) in stats.items():
            assert torch.equal(mean, evaluator_again.stats[subnet][name][0])
            assert torch.equal(var, evaluator_again.stats[subnet][name][1])
