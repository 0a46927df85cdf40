"""Supernet training: configuration, the sandwich step, the trainer, checkpoints, multi-process."""

from .checkpoint import load_run, run_record
from .config import PRESETS, CheckpointConfig, RecipeConfig, SamplerConfig, TrainConfig, apply_preset, update_config
from .state import TrainState
from .step import SandwichStep, StepResult, distill_loss
from .trainer import Trainer

__all__ = [
    "PRESETS", "CheckpointConfig", "RecipeConfig", "SamplerConfig", "SandwichStep", "StepResult", "TrainConfig",
    "TrainState", "Trainer", "apply_preset", "distill_loss", "load_run", "run_record", "update_config",
]
