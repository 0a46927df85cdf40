"""Typed training configuration, its JSON form, and the named presets of ``pssnet train``.

Each field declares its command-line flag, help text and bounds (:func:`pssnet.options.option`), so
``pssnet train``'s flags and :meth:`TrainConfig.validate` are generated from these classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError
from ..fileio import output_dir
from ..options import MAX_SEED, check_bounds, option

_WHAT, _RUN, _RECIPE, _PSS = "what to train", "run", "recipe (defaults: the paper's)", "PSS sampler"


def _architecture_names() -> list[str]:
    from ..architectures import ARCHITECTURES

    return sorted(ARCHITECTURES)


def _preset_names() -> list[str]:
    return sorted(PRESETS)


@dataclass
class RecipeConfig:
    """Optimisation recipe (paper defaults for ImageNet)."""

    lr: Optional[float] = option(None, group=_RECIPE, min=0.0, help="learning rate (default 0.3 x global batch / 1024)")
    lr_per_1024: float = option(0.3, flag=None, above=0.0, help="learning rate per 1024 images of global batch, when lr is None")
    momentum: float = option(0.9, group=_RECIPE, min=0.0, below=1.0, help="SGD momentum (default 0.9)")
    nesterov: bool = option(True, flag="--no-nesterov", group=_RECIPE, help="plain instead of Nesterov momentum")
    weight_decay: float = option(1e-4, group=_RECIPE, min=0.0,
                                 help="on conv (not depthwise) and linear weights only (default 1e-4)")
    label_smoothing: float = option(0.0, group=_RECIPE, min=0.0, below=1.0, help="label smoothing of the largest subnet's loss")
    warmup_epochs: float = option(0.0, group=_RECIPE, min=0.0, help="epochs of linear learning-rate warm-up")


@dataclass
class SamplerConfig:
    """Subnet sampler and its PSS schedule."""

    name: str = option("pss", flag="--sampler", group=_WHAT, choices=("pss", "uniform"),
                       help="PSS or the uniform baseline (default pss)")
    pool_size: int = option(50, group=_PSS, min=1, help="subnets kept per budget target (default 50)")
    ema: float = option(0.9, group=_PSS, min=0.0, below=1.0, help="score EMA factor lambda (default 0.9)")
    p0: float = option(1.0, flag="--p-range", group=_PSS, above=0.0, max=1.0, metavar="P0:P1", example="1.0:0.01",
                       help="space-vs-pool probability schedule (default 1.0:0.01)")
    p1: float = option(0.01, flag="--p-range", above=0.0, max=1.0, help="(the second part of --p-range)")
    t0: float = option(1.0, flag="--t-range", group=_PSS, above=0.0, metavar="T0:T1", example="1.0:0.01",
                       help="softmax temperature schedule (default 1.0:0.01)")
    t1: float = option(0.01, flag="--t-range", above=0.0, help="(the second part of --t-range)")
    map_samples: int = option(1_000_000, group=_PSS, min=2, help="random subnets behind the space map (default 1000000)")
    map_cache: Optional[str] = option(None, group=_PSS, on_resume="local", metavar="DIR",
                                      help="space-map cache directory ('' disables)")  # None: ~/.cache/pssnet


@dataclass
class CheckpointConfig:
    """When checkpoints are written and how many are kept."""

    every_minutes: float = option(10.0, flag="--checkpoint-minutes", group=_RUN, above=0.0, on_resume="harmless",
                                  help="minutes between checkpoints (default 10)")
    every_iters: int = option(0, flag="--checkpoint-iters", group=_RUN, min=0, on_resume="harmless",
                              help="also checkpoint every N iterations")  # 0: only by time and at epoch ends
    keep: int = option(3, flag="--keep-checkpoints", group=_RUN, min=1, on_resume="harmless", help="checkpoints kept (default 3)")


@dataclass
class TrainConfig:
    """Everything a run needs; stored as ``config.json`` and inside every checkpoint."""

    preset: Optional[str] = option(None, group=_WHAT, choices=_preset_names,
                                   help="named set-up; explicit flags override it")
    arch: str = option("", group=_WHAT, choices=_architecture_names, help="supernet architecture")
    data: str = option("", group=_WHAT, metavar="SPEC", on_resume="data",
                       help="fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR or "
                            "fashion-mnist-mini; on --resume it may name the same data in another place")
    out: str = option("", group=_RUN, on_resume="local", metavar="DIR", required=True, help="run directory")
    constraints: list[str] = option(
        flag="--constraint", group=_WHAT, repeat=True, metavar="TYPE:START:STOP:STEP", default_factory=list,
        help="budget grid, repeatable (flops, params, latency_cpu, latency_gpu); "
             "TYPE:auto[:COUNT] spans the space's range, TYPE:interior[:COUNT] the same without its end targets")
    epochs: int = option(250, group=_RUN, min=1, on_resume="harmless", help="passes over the training images (default 250)")
    batch_size: int = option(128, group=_RUN, min=1,
                             help="images per process and iteration (a preset's batch is the global batch, "
                                  "split over the processes)")
    batch_is_global: bool = option(False, flag=None,
                                   help="batch_size is the global batch, split over the processes (what a "
                                        "preset sets; an explicit --batch-size is per process; Python API only)")
    max_iters: Optional[int] = option(None, group=_RUN, min=1, on_resume="harmless",
                                      help="stop after this many iterations (schedules shrink to fit)")
    seed: int = option(0, group=_RUN, min=0, max=MAX_SEED, help="seed of weights, data order, augmentation and sampler (default 0)")
    holdout: int = option(2000, group=_RUN, min=0,
                          help="training images kept out for pssnet eval to select subnets on "
                               "(default 2000, at most a tenth; 0 trains on all)")
    luts: list[str] = option(flag="--lut", group=_WHAT, repeat=True, metavar="FILE", default_factory=list,
                             help="latency table (pssnet lut build), repeatable")
    small_input: Optional[bool] = option(None, group=_WHAT,
                                         help="stride-1 stem for 28-32 px images (default: by image size)")
    resolutions: Optional[list[int]] = option(None, group=_WHAT, min=1, metavar="MIN:MAX:STEP", example="24:32:4",
                                              help="override the resolution range")
    width_range: list[float] = option(flag=None, above=0.0, default_factory=lambda: [0.75, 1.0],
                                      help="[min, max] width multiplier of every stage (Python API only)")
    image_size: Optional[int] = option(None, group=_WHAT, min=8, metavar="N",
                                       help="folder data: train at N px (default: the images' native size, "
                                            "at most 224)")
    dropout: float = option(0.0, group=_WHAT, min=0.0, below=1.0,
                            help="classifier dropout (default 0: the teacher and the reused pool scores "
                                 "stay noise-free, as in the reference)")
    init: Optional[str] = option(None, group=_WHAT, metavar="torchvision|PATH",
                                 help="start from torchvision's ImageNet weights or a local torchvision-format "
                                      "state dict (fresh runs only)")
    device: str = option("auto", group=_RUN, on_resume="local", choices=("auto", "cpu", "cuda"),
                         help="auto (default): CUDA when available, else CPU")
    amp: bool = option(False, group=_RUN, help="mixed precision")
    channels_last: bool = option(False, group=_RUN, help="channels-last memory format (GPUs)")
    num_workers: Optional[int] = option(None, group=_RUN, min=0, on_resume="local",
                                        help="data-loader workers (default: on CUDA one per CPU core of this "
                                             "process but one, at most 8; on the CPU 0)")
    decode_on_device: bool = option(False, group=_RUN, on_resume="local",
                                    help="decode folder JPEGs on the CUDA device (nvJPEG) instead of in the workers")
    threads: Optional[int] = option(None, group=_RUN, min=1, on_resume="local", help="torch CPU threads")
    log_every: int = option(10, group=_RUN, min=1, on_resume="harmless", help="iterations between metrics lines (default 10)")
    progress: bool = option(True, flag="--no-progress", group=_RUN, on_resume="local", help="no progress bar")
    dist_timeout_minutes: float = option(10.0, flag=None, above=0.0, on_resume="local", help="torchrun process-group timeout (Python API only)")
    recipe: RecipeConfig = dataclasses.field(default_factory=RecipeConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """The config of ``data`` (a ``to_dict`` result); unknown keys are ignored."""
        return update_config(cls(), data, strict=False)

    def process_batch(self, world_size: int) -> int:
        """Images per process and iteration with ``world_size`` processes: ``batch_size``, or its
        share when it is the global batch (a UserError naming the nearest batches that split)."""
        if not self.batch_is_global:
            return self.batch_size
        if self.batch_size % world_size:
            raise UserError(_indivisible_batch(self.batch_size, world_size, self.preset))
        return self.batch_size // world_size

    def global_batch(self, world_size: int) -> int:
        """Images per iteration over all ``world_size`` processes."""
        return self.process_batch(world_size) * world_size

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
        output_dir(self.out)
        if self.sampler.name not in SAMPLERS:
            raise UserError(f"unknown sampler '{self.sampler.name}'; use one of {', '.join(SAMPLERS)}")
        if self.sampler.name == "pss" and not self.constraints:
            raise UserError("the pss sampler needs at least one --constraint TYPE:START:STOP:STEP")
        check_bounds(self)
        return self


def _indivisible_batch(batch: int, world_size: int, preset: Optional[str]) -> str:
    """Why a global batch cannot be split over ``world_size`` processes, and the nearest that can."""
    below = batch // world_size * world_size
    nearest = [b for b in (below, below + world_size) if b > 0]
    options = " or ".join(f"{b} (--batch-size {b // world_size} per process)" for b in nearest)
    what = f"preset {preset}'s global batch" if preset else "the global batch"
    return (f"{what} {batch} does not split evenly over {world_size} processes; the nearest that "
            f"{'do' if len(nearest) > 1 else 'does'}: {options}")


def run_summary(config: TrainConfig, world_size: int, lr: float, constraints: Sequence[Any]) -> str:
    """One line saying what a run trains: architecture, sampler, batch per process and global, lr, grids."""
    process = config.process_batch(world_size)
    what = config.arch + (f" (preset {config.preset})" if config.preset else "")
    grids = "; ".join(f"{c.text} ({len(c.targets)} targets)" for c in constraints) or "no budget grid"
    return (f"training {what} with {config.sampler.name}: batch {process} per process x {world_size} "
            f"process{'es' if world_size > 1 else ''} = global batch {process * world_size}, lr {lr:.4g}; {grids}")


def update_config(config: Any, values: Mapping[str, Any], strict: bool = True) -> Any:
    """Set ``config``'s fields from plain data (nested sections as dicts); lists are copied.

    ``strict``: an unknown key is a UserError (presets, overrides); otherwise it is ignored
    (configs saved by other versions)."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    for key, value in values.items():
        if key not in fields:
            if strict:
                raise UserError(f"unknown setting '{key}' for {type(config).__name__}")
            continue
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            update_config(current, value, strict)
        else:
            setattr(config, key, list(value) if isinstance(value, (list, tuple)) else value)
    return config


# A preset's batch_size is the global batch (apply_preset), split over the processes.
_IMAGENET = {"epochs": 250, "batch_size": 1024, "small_input": False}
# lr 0.1 without warm-up spikes the loss above 10 in the first iterations on Fashion-MNIST; one warm-up epoch.
_SMALL = {"epochs": 30, "batch_size": 128, "small_input": True,
          "recipe": {"lr": 0.1, "weight_decay": 5e-5, "warmup_epochs": 1.0}}
_MINI = {"arch": "mobilenet_v2", "data": "fashion-mnist-mini", "constraints": ["flops:11:24:1"],
         **{**_SMALL, "epochs": 5, "batch_size": 64,
            "recipe": {"lr": 0.05, "weight_decay": 5e-5, "warmup_epochs": 0.2}}}


# Latency grids come from the user's tables, so they are sized by count: the reference's hand-set
# latency grids (scripts/train/pss-mbv*-{c,g,m}.sh) have 17 to 22 points, ends included; auto:30
# has 15 to 30 (the step is rounded up to 1, 2, 2.5 or 5 x a power of ten).
_LATENCY_GRID = "interior:30"


def _latency_presets(prefix: str, arch: str, flops: str) -> dict[str, dict[str, Any]]:
    """The FLOPs, CPU-latency, GPU-latency and all-three set-ups of one ImageNet architecture."""
    cpu, gpu = f"latency_cpu:{_LATENCY_GRID}", f"latency_gpu:{_LATENCY_GRID}"
    return {
        f"{prefix}-flops": {"arch": arch, "constraints": [flops], **_IMAGENET},
        f"{prefix}-cpu": {"arch": arch, "constraints": [cpu], "needs_lut": ["latency_cpu"], **_IMAGENET},
        f"{prefix}-gpu": {"arch": arch, "constraints": [gpu], "needs_lut": ["latency_gpu"], **_IMAGENET},
        f"{prefix}-multi": {"arch": arch, "constraints": [flops, cpu, gpu], "needs_lut": ["latency_cpu", "latency_gpu"],
                            **_IMAGENET},
    }


# Grids hold the interior targets only, as the reference trains them (train.py builds its map from
# range(START + STEP, STOP - STEP + 1, STEP)): the sandwich rule trains the smallest and largest
# subnets every step, so the first target is one step above the smallest subnet's bucket and the
# last one step below the largest's. MFLOPs of the smallest and largest subnets (`pssnet info`):
# MobileNetV1 106.8 / 568.7 (buckets 110 / 570), MobileNetV2 69.1 / 300.8 (70 / 300; the paper's
# smallest PSS-MBV2-F is 69M, the reference's counter adds the average pool: 69.2), ResNet-50
# 759.5 / 4089.2 (800 / 4100); small input, 24-32 px: MobileNetV2 11.0-11.3 / 23.9-24.5 (11 / 24),
# MobileNetV1 16.2-16.5 / 45.8-46.4 (16 / 46). The quick set-ups mini-mbv2, demo and compare-fmnist
# keep their end targets: the demo's transcript, docs/results.md and the tests were made with them.
# ResNet-50 uses the MobileNet recipe: the reference trains both its models with one recipe and has
# no ResNet-50 script.
PRESETS: dict[str, dict[str, Any]] = {
    **_latency_presets("mbv1", "mobilenet_v1", "flops:120:560:10"),
    **_latency_presets("mbv2", "mobilenet_v2", "flops:80:290:10"),
    **_latency_presets("r50", "resnet50", "flops:900:4000:100"),
    "fmnist-mbv2": {"arch": "mobilenet_v2", "data": "fashion-mnist", "constraints": ["flops:12:23:1"], **_SMALL},
    "fmnist-mbv1": {"arch": "mobilenet_v1", "data": "fashion-mnist", "constraints": ["flops:18:44:2"], **_SMALL},
    "mini-mbv2": _MINI,
    "cifar10-mbv2": {"arch": "mobilenet_v2", "constraints": ["flops:12:23:1"], **_SMALL, "epochs": 200},
    "cifar10-mbv1": {"arch": "mobilenet_v1", "constraints": ["flops:18:44:2"], **_SMALL, "epochs": 200},
    # MFLOPs of the small-input MobileNetV2 at 20-28 px: about 9.7 to 21.7; up to Fashion-MNIST's own
    # 28 px, cheap enough for a CPU. 281 iterations of 32 = 1.5 epochs of the shipped 6,000 images.
    # A short schedule: lr 0.1 diverges within a few hundred iterations (measured: 0.02 and 0.05 reach
    # ~70% in 120 iterations, 0.2 and 0.4 stay at ~20-30%). 200,000 map samples cover 5 targets in seconds.
    "demo": {**_MINI, "constraints": ["flops:10:20:2.5"], "resolutions": [20, 28, 4], "epochs": 2,
             "max_iters": 281, "batch_size": 32, "log_every": 25,
             "recipe": {"lr": 0.02, "weight_decay": 5e-5, "warmup_epochs": 0.1},
             "sampler": {"map_samples": 200_000}},
    # PSS vs. uniform on full Fashion-MNIST: 150 iterations of 64, 15 of them warm-up (of 60,000 images).
    "compare-fmnist": {"arch": "mobilenet_v2", "data": "fashion-mnist", "constraints": ["flops:10:20:2.5"],
                       **_SMALL, "epochs": 1, "batch_size": 64, "max_iters": 150, "resolutions": [20, 28, 4],
                       "holdout": 1000, "recipe": {"lr": 0.04, "weight_decay": 5e-5, "warmup_epochs": 0.016},
                       "sampler": {"map_samples": 200_000}},
}


def apply_preset(config: TrainConfig, name: str) -> list[str]:
    """Fill ``config`` from preset ``name``; returns the latency kinds whose tables it needs.

    A preset's batch is the global batch: any number of processes trains the same recipe."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; use one of {', '.join(sorted(PRESETS))}")
    preset = dict(PRESETS[name])
    needs = preset.pop("needs_lut", [])
    update_config(config, preset)
    config.preset = name
    config.batch_is_global = True
    return list(needs)
