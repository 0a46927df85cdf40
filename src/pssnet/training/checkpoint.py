"""Atomic checkpoints, RNG state capture, and the run-directory reader :func:`load_run`
(a :class:`~pssnet.run_record.RunRecord`).

Everything is saved as tensors and plain Python data, so that torch's weights-only loader reads
it back (``weights_only=True``); nothing is pickled as objects.

A checkpoint proves that it belongs to its run directory: a run that starts writes a random run
id to ``RUN/run-id``, and every checkpoint and ``final.pt`` records it; a checkpoint also records
the iteration its name carries. A file copied in from another run, or renamed, is never loaded
(:func:`find_checkpoint` names why). Runs of an older pssnet have no id anywhere and are read as
before.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import re
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np
import torch

from ..errors import UserError
from ..fileio import load_plain, save_atomic, write_text_atomic
from ..run_record import RUN_FORMAT, RunRecord

CHECKPOINT_FORMAT = "pssnet-checkpoint/1"
_CHECKPOINT_NAME = re.compile(r"^ckpt-(\d{9})\.pt$")
_RERUN_HINT = "resume from an older checkpoint or train again"
RUN_ID_NAME = "run-id"  # RUN/run-id: the run's id, which its checkpoints and final.pt record
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


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


def new_run_id() -> str:
    return uuid.uuid4().hex


def read_run_id(run_dir: str | os.PathLike) -> Optional[str]:
    """The id in ``RUN/run-id``, or None for a run directory without one (an older pssnet's)."""
    path = pathlib.Path(run_dir) / RUN_ID_NAME
    try:
        text = path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); check its permissions") from None
    if not _RUN_ID.match(text):
        raise UserError(f"{path} is damaged (it should hold the run's 32-digit id, which every checkpoint of "
                        "the run records too); restore it, or train into a new --out")
    return text


def write_run_id(run_dir: str | os.PathLike, run_id: str) -> None:
    write_text_atomic(pathlib.Path(run_dir) / RUN_ID_NAME, run_id + "\n")


def ownership_problem(content: Mapping[str, Any], run_id: Optional[str]) -> Optional[str]:
    """Why a checkpoint's or run file's ``content`` is not of the run whose id is ``run_id``, or
    None when it is (no id on either side: a run of an older pssnet)."""
    recorded = content.get("run_id")
    if recorded == run_id:
        return None
    if run_id is None:
        return f"it belongs to another run (run id {recorded}; this run directory has no {RUN_ID_NAME})"
    if recorded is None:
        return f"it belongs to another run (it records no run id; this run's is {run_id})"
    return f"it belongs to another run (run id {recorded}, not this run's {run_id})"


def checkpoint_problem(path: pathlib.Path, content: Mapping[str, Any], run_id: Optional[str]) -> Optional[str]:
    """Why the checkpoint at ``path`` may not be resumed or evaluated, or None when it may: it
    must be of this run and hold the iteration its name says."""
    owner = ownership_problem(content, run_id)
    if owner is not None:
        return owner
    named, iteration = int(_CHECKPOINT_NAME.match(path.name).group(1)), content.get("iteration")
    if isinstance(iteration, bool) or not isinstance(iteration, int):
        return f"unreadable (its iteration is {iteration!r}, not a whole number)"
    if iteration != named:
        return f"its iteration {iteration} does not match its name {named}"
    return None


@dataclass(frozen=True)
class Rejected:
    """A checkpoint file that may not be used, why, and the suffix it is set aside with."""

    path: pathlib.Path
    reason: str
    run_id: Optional[str] = None  # the run id the file records, when it could be read

    @property
    def suffix(self) -> str:
        if self.reason.startswith("it belongs to another run"):
            return ".foreign"
        return ".misnamed" if self.reason.startswith("its iteration") else ".damaged"


@dataclass
class CheckpointSearch:
    """The newest usable checkpoint of a run (None: there is none) and the newer ones rejected."""

    checkpoint: Optional[dict[str, Any]] = None
    path: Optional[pathlib.Path] = None
    rejected: list[Rejected] = field(default_factory=list)


def find_checkpoint(run_dir: str | os.PathLike, run_id: Optional[str]) -> CheckpointSearch:
    """The newest checkpoint of the run ``run_id`` in ``run_dir`` that is readable, its own, and
    holds the iteration its name says; the newer files that fail are listed with the reason."""
    search = CheckpointSearch()
    for path in reversed(list_checkpoints(run_dir)):
        try:
            content = load_file(path)
        except UserError:  # e.g. truncated by a full disk: fall back to the one before
            search.rejected.append(Rejected(path, "unreadable (truncated or not a pssnet checkpoint)"))
            continue
        problem = checkpoint_problem(path, content, run_id)
        if problem is None:
            search.checkpoint, search.path = content, path
            return search
        recorded = content.get("run_id")
        search.rejected.append(Rejected(path, problem, recorded if isinstance(recorded, str) else None))
    return search


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
    """Read a finished (``final.pt``) or interrupted (newest usable checkpoint) training run.

    A ``final.pt`` of another run is refused; a checkpoint of another run, or one whose name does
    not match its iteration, is passed by with a note on stderr (:func:`find_checkpoint`)."""
    run_dir = pathlib.Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist; pass the --out directory of pssnet train")
    run_id = read_run_id(run_dir)
    final = run_dir / "final.pt"
    if final.is_file():
        content = load_plain(final, "pssnet run file", RUN_FORMAT, _RERUN_HINT)
        problem = ownership_problem(content, run_id)
        if problem is not None:
            raise UserError(f"{final} is not this run's: {problem}; move it away to use the run's newest "
                            "checkpoint, or evaluate the run it came from")
        return RunRecord.from_dict(content, f"'{final}'")
    search = find_checkpoint(run_dir, run_id)
    if search.checkpoint is None:
        _no_usable_checkpoint(run_dir, search.rejected)  # one line naming each file and why
    for rejected in search.rejected:  # the trainer sets them aside; a reader only passes them by
        print(f"note: skipped {rejected.path}: {rejected.reason}", file=sys.stderr, flush=True)
    return run_record(search.checkpoint, f"the newest checkpoint of {run_dir}")


def _no_usable_checkpoint(run_dir: pathlib.Path, rejected: list[Rejected]) -> None:
    """Raise the one line that says why a run without final.pt has nothing to read."""
    if not rejected:
        raise UserError(f"{run_dir} has neither final.pt nor checkpoints; is it a pssnet train --out directory?")
    ending = " and there is no final.pt; train again into this directory or another --out"
    if all(r.suffix == ".damaged" for r in rejected):  # e.g. truncated by a full disk or a kill
        many = len(rejected) > 1
        raise UserError(f"{run_dir}: its checkpoint{'s' if many else ''} ({', '.join(r.path.name for r in rejected)}) "
                        f"{'are' if many else 'is'} damaged (truncated or not a pssnet checkpoint){ending}")
    reasons = "; ".join(f"{r.path.name}: {r.reason}" for r in rejected)
    raise UserError(f"{run_dir}: none of its checkpoints can be used ({reasons}){ending}")
