"""Shared builders for the evaluation/deployment tests: a tiny supernet, a hand-made run
(the ``final.pt`` contract) with pools, and random image data."""

from __future__ import annotations

import random
import types

import torch
from torch.utils.data import TensorDataset

import pssnet
from pssnet.constraints import Constraint, target_key
from pssnet.resources import ResourceMeter
from pssnet.run_record import RunRecord

CONSTRAINT = Constraint("flops", 5.0, 11.0, 2.0)
IMAGE_SIZE = 20


def tiny_supernet(num_classes: int = 4) -> pssnet.Supernet:
    return pssnet.create_supernet("mobilenet_v2", num_classes=num_classes, in_chans=1, small_input=True,
                                  resolutions=(12, 20, 4))


def tiny_run(sampler: str = "pss", seed: int = 0, num_classes: int = 4, data: str | None = None) -> RunRecord:
    """A run as ``pssnet train`` writes it, with random pools and perturbed BN statistics."""
    torch.manual_seed(seed)
    net = tiny_supernet(num_classes)
    with torch.no_grad():  # non-trivial affine BN parameters so that statistics matter
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    meter = ResourceMeter(net.layout)
    pools: dict = {}
    if sampler == "pss":
        rng = random.Random(seed)
        for _ in range(300):
            s = pssnet.canonicalize(net, net.space.sample(rng))  # pools hold canonical subnets
            t = float(CONSTRAINT.bucket_of(meter.measure("flops", s)))
            if t in CONSTRAINT.targets:
                pool = pools.setdefault("flops", {}).setdefault(target_key(t), [])
                if len(pool) < 6 and s.to_dict() not in [e["subnet"] for e in pool]:
                    pool.append({"subnet": s.to_dict(), "score": -rng.random()})
        for pool in pools["flops"].values():
            pool.sort(key=lambda e: -e["score"])
    return RunRecord.from_dict({
        "format": "pssnet-run/1", "model_config": net.config.to_dict(), "state_dict": net.state_dict(),
        "constraints": [CONSTRAINT.to_dict()], "pools": pools, "sampler": sampler, "data": data,
        "image_size": None, "luts": {}, "seed": seed, "iterations": 0, "holdout": None})


def tiny_data(n_train: int = 96, n_test: int = 40, seed: int = 0) -> types.SimpleNamespace:
    """Random images whose label is a simple function of the image (so accuracies differ)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, 1, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    y = (x[:, 0, :10].mean((1, 2)) > 0).long() + 2 * (x[:, 0, 10:].mean((1, 2)) > 0).long()
    return types.SimpleNamespace(train_eval=TensorDataset(x[:n_train], y[:n_train]),
                                 test=TensorDataset(x[n_train:], y[n_train:]), image_size=IMAGE_SIZE)
