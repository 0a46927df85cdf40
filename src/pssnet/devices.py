"""Devices: turning a user's device name into a ``torch.device``, and describing a device.

The one place that decides what ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` mean, so training,
evaluation and latency tables agree on it.
"""

from __future__ import annotations

import pathlib
import platform
from typing import Any

import torch

from .errors import UserError


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> the local rank's GPU; ``cuda:N``; ``cpu``.

    Unknown names and GPUs that are not available are :class:`UserError`\\ s.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name != "cuda" and not name.startswith("cuda:"):
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for but no GPU is available; use --device cpu")
    if name == "cuda":
        return torch.device("cuda", local_rank)
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s); "
                        f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def describe_device(device_type: str) -> dict[str, Any]:
    """Plain-data description of this machine's ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    info: dict[str, Any] = {
        "type": device_type,
        "cpu": _cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if device_type == "cuda":
        info["cuda"] = torch.cuda.get_device_name()
        info["cuda_version"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
