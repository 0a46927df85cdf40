"""Atomic checkpoints, RNG state capture, and the run-directory reader :func:`load_run`
(a :class:`~pssnet.run_record.RunRecord`).

Everything is saved as tensors and plain Python data, so that torch's weights-only loader reads
it back (``weights_only=True``); nothing is pickled as objects.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import UserError
from ..fileio import load_plain, save_atomic
from ..run_record import RUN_FORMAT, RunRecord

CHECKPOINT_FORMAT = "pssnet-checkpoint/1"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
_RERUN_HINT = "resume from an older checkpoint or train again"


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint or run file, read with the weights-only loader."""
    return load_plain(path, "pssnet checkpoint", (RUN_FORMAT, CHECKPOINT_FORMAT), _RERUN_HINT)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states as plain data and tensors."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": json.dumps(random.getstate()),
        "numpy": json.dumps([np_state[0], np_state[1].tolist(), *np_state[2:]]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(state["numpy"])
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | os.PathLike) -> pathlib.Path:
    return pathlib.Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Checkpoint files of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | os.PathLike, state: Mapping[str, Any], keep: int) -> pathlib.Path:
    """Write ``checkpoints/ckpt-<iteration>.pt`` atomically and delete all but the last ``keep``."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt-{int(state['iteration']):09d}.pt"
    save_atomic({**state, "format": CHECKPOINT_FORMAT}, path)
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest_checkpoint(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run, or None when there is none."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_file(path)
        except UserError:
            continue  # an unreadable file (e.g. disk full): fall back to the one before
    return None


def run_record(checkpoint: Mapping[str, Any], source: str = "the checkpoint") -> RunRecord:
    """The run record (``final.pt``'s contents) of a checkpoint's contents."""
    sampler, config = checkpoint.get("sampler") or {}, checkpoint.get("config") or {}
    return RunRecord.from_dict({
        "format": RUN_FORMAT,
        "model_config": checkpoint.get("model_config"),
        "state_dict": checkpoint.get("state_dict"),
        "constraints": checkpoint.get("constraints"),
        "pools": sampler.get("pools"),
        "sampler": sampler.get("name"),
        "data": config.get("data"),
        "image_size": config.get("image_size"),
        "luts": checkpoint.get("luts"),
        "seed": config.get("seed"),
        "iterations": checkpoint.get("iteration"),
        "holdout": checkpoint.get("holdout"),  # {"count", "seed"} of data.split_train, or None
    }, source)


def load_run(run_dir: str | os.PathLike) -> RunRecord:
    """Read a finished (``final.pt``) or interrupted (newest checkpoint) training run."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass the --out directory of pssnet train")
    final = run_dir / "final.pt"
    if final.is_file():
        return RunRecord.from_dict(load_plain(final, "pssnet run file", RUN_FORMAT, _RERUN_HINT), f"'{final}'")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        damaged = list_checkpoints(run_dir)
        if damaged:  # every checkpoint failed to load (e.g. truncated by a full disk or a kill)
            raise UserError(f"{run_dir}: its checkpoint{'s' if len(damaged) > 1 else ''} "
                            f"({', '.join(p.name for p in damaged)}) {'are' if len(damaged) > 1 else 'is'} "
                            "damaged (truncated or not a pssnet checkpoint) and there is no final.pt; "
                            "train again into this directory or another --out")
        raise UserError(f"{run_dir} has neither final.pt nor checkpoints; is it a pssnet train --out directory?")
    return run_record(checkpoint, f"the newest checkpoint of {run_dir}")
