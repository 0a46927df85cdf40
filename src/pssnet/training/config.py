"""Typed training configuration, its JSON form, and the named presets of ``pssnet train``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ..errors import UserError


@dataclass
class RecipeConfig:
    """Optimisation recipe (paper defaults for ImageNet)."""

    lr: Optional[float] = None  # None: lr_per_1024 * global batch / 1024
    lr_per_1024: float = 0.3
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4  # conv (not depthwise) and linear weights only
    label_smoothing: float = 0.0
    warmup_epochs: float = 0.0


@dataclass
class SamplerConfig:
    """Subnet sampler and its PSS schedule."""

    name: str = "pss"
    pool_size: int = 50
    ema: float = 0.9
    p0: float = 1.0
    p1: float = 0.01
    t0: float = 1.0
    t1: float = 0.01
    map_samples: int = 1_000_000
    map_cache: Optional[str] = None  # None: ~/.cache/pssnet/space_maps; "" disables the cache


@dataclass
class CheckpointConfig:
    every_minutes: float = 10.0
    every_iters: int = 0  # 0: only by time and at epoch ends
    keep: int = 3


@dataclass
class TrainConfig:
    """Everything a run needs; stored as ``config.json`` and inside every checkpoint."""

    arch: str = ""
    data: str = ""
    out: str = ""
    constraints: list[str] = field(default_factory=list)
    epochs: int = 250
    batch_size: int = 128  # per process
    max_iters: Optional[int] = None
    seed: int = 0
    # Training images kept out for `pssnet eval` to select subnets on (at most a tenth of the split).
    holdout: int = 2000
    luts: list[str] = field(default_factory=list)
    small_input: Optional[bool] = None  # None: decided by image size (<= 64 px)
    image_size: Optional[int] = None  # folder data: train at this size (None: native size of the images, <= 224)
    resolutions: Optional[list[int]] = None  # [min, max, step]
    width_range: list[float] = field(default_factory=lambda: [0.75, 1.0])
    dropout: float = 0.0  # classifier dropout; 0 keeps the teacher and the reused pool scores noise-free
    init: Optional[str] = None  # "torchvision" or a torchvision-format state dict: start from those weights
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    num_workers: int = 0
    threads: Optional[int] = None
    log_every: int = 10
    progress: bool = True
    dist_timeout_minutes: float = 10.0
    preset: Optional[str] = None
    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        nested = {"recipe": RecipeConfig, "sampler": SamplerConfig, "checkpoint": CheckpointConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known and k not in nested}
        for name, sub in nested.items():
            sub_known = {f.name for f in dataclasses.fields(sub)}
            values[name] = sub(**{k: v for k, v in dict(data.get(name, {})).items() if k in sub_known})
        return cls(**values)

    def validate(self) -> "TrainConfig":
        """Raise a UserError naming the first missing or impossible setting."""
        from ..architectures import ARCHITECTURES
        from ..sampling import SAMPLERS

        if not self.arch:
            raise UserError("no architecture given; pass --arch (e.g. mobilenet_v2) or a --preset")
        if self.arch not in ARCHITECTURES:
            raise UserError(f"unknown architecture '{self.arch}'; use one of {', '.join(sorted(ARCHITECTURES))}")
        if not self.data:
            raise UserError("no data given; pass --data SPEC (e.g. fashion-mnist-mini)")
        if not self.out:
            raise UserError("no output directory given; pass --out DIR")
        if self.sampler.name not in SAMPLERS:
            raise UserError(f"unknown sampler '{self.sampler.name}'; use one of {', '.join(SAMPLERS)}")
        if self.sampler.name == "pss" and not self.constraints:
            raise UserError("the pss sampler needs at least one --constraint TYPE:START:STOP:STEP")
        for name, value in (("epochs", self.epochs), ("batch size", self.batch_size),
                            ("log interval", self.log_every), ("pool size", self.sampler.pool_size),
                            ("checkpoints to keep", self.checkpoint.keep)):
            if value < 1:
                raise UserError(f"{name} must be at least 1, got {value}")
        if self.holdout < 0:
            raise UserError(f"--holdout must be 0 or more, got {self.holdout}")
        if self.max_iters is not None and self.max_iters < 1:
            raise UserError(f"--max-iters must be at least 1, got {self.max_iters}")
        return self


_IMAGENET = {"epochs": 250, "batch_size": 1024, "small_input": False}
# lr 0.1 without warm-up spikes the loss above 10 in the first iterations on Fashion-MNIST; one warm-up epoch.
_SMALL = {"epochs": 30, "batch_size": 128, "small_input": True,
          "recipe": {"lr": 0.1, "weight_decay": 5e-5, "warmup_epochs": 1.0}}


def _latency_presets(prefix: str, arch: str, flops: str) -> dict[str, dict[str, Any]]:
    return {
        f"{prefix}-flops": {"arch": arch, "constraints": [flops], **_IMAGENET},
        f"{prefix}-cpu": {"arch": arch, "constraints": ["latency_cpu:auto:40"], "needs_lut": ["latency_cpu"],
                          **_IMAGENET},
        f"{prefix}-gpu": {"arch": arch, "constraints": ["latency_gpu:auto:40"], "needs_lut": ["latency_gpu"],
                          **_IMAGENET},
        f"{prefix}-multi": {"arch": arch, "constraints": [flops, "latency_cpu:auto:40", "latency_gpu:auto:40"],
                            "needs_lut": ["latency_cpu", "latency_gpu"], **_IMAGENET},
    }


# The paper's eight ImageNet set-ups (MobileNetV1/V2 x FLOPs, CPU latency, GPU latency, all three)
# and small set-ups whose FLOPs grids span each small-input space (see `pssnet info --small-input`).
PRESETS: dict[str, dict[str, Any]] = {
    **_latency_presets("mbv1", "mobilenet_v1", "flops:110:570:10"),
    **_latency_presets("mbv2", "mobilenet_v2", "flops:70:300:10"),
    "fmnist-mbv2": {"arch": "mobilenet_v2", "data": "fashion-mnist", "constraints": ["flops:11:24:1"], **_SMALL},
    "fmnist-mbv1": {"arch": "mobilenet_v1", "data": "fashion-mnist", "constraints": ["flops:16:46:2"], **_SMALL},
    "mini-mbv2": {"arch": "mobilenet_v2", "data": "fashion-mnist-mini", "constraints": ["flops:11:24:1"],
                  **{**_SMALL, "epochs": 5, "batch_size": 64, "recipe": {"lr": 0.05, "weight_decay": 5e-5,
                                                                         "warmup_epochs": 0.2}}},
    "cifar10-mbv2": {"arch": "mobilenet_v2", "constraints": ["flops:11:24:1"], **_SMALL, "epochs": 200},
    "cifar10-mbv1": {"arch": "mobilenet_v1", "constraints": ["flops:17:46:2"], **_SMALL, "epochs": 200},
}


def apply_preset(config: TrainConfig, name: str) -> list[str]:
    """Fill ``config`` from preset ``name``; returns the latency kinds whose tables it needs."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; use one of {', '.join(sorted(PRESETS))}")
    preset = dict(PRESETS[name])
    needs = preset.pop("needs_lut", [])
    for key, value in preset.items():
        if key == "recipe":
            for k, v in value.items():
                setattr(config.recipe, k, v)
        else:
            setattr(config, key, list(value) if isinstance(value, list) else value)
    config.preset = name
    return list(needs)
