"""The run directory's life cycle: one writer at a time (a lock), clean-up after a crash (stray
temporary files, checkpoints that cannot be used), and what a ``--resume`` may change.
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import re
import time
from typing import Any, Collection, Mapping, Optional, Sequence

from ..data.datasets import dataset_name
from ..errors import UserError
from ..fileio import write_text_atomic
from .checkpoint import Rejected
from .config import TrainConfig
from ..options import declared_options

LOCK_NAME = ".lock"
# fileio.atomic_write's temporary names: .<target>.<pid>.<8 hex>.tmp, next to the target.
_STRAY = re.compile(r"^\..+\.\d+\.[0-9a-f]{8}\.tmp$")
_LENGTH_FLAGS = ("--epochs", "--max-iters")


def remove_if_unused(run_dir: pathlib.Path) -> None:
    """Remove a run directory that holds nothing but its lock file (a run that failed before
    writing anything, e.g. on bad data)."""
    run_dir = pathlib.Path(run_dir)
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {LOCK_NAME}:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
        run_dir.rmdir()


class RunLock:
    """An exclusive advisory ``fcntl`` lock on ``RUN/.lock`` (which holds the holder's PID).

    The operating system releases it when the process ends, however it ends."""

    def __init__(self, run_dir: pathlib.Path) -> None:
        self.path = pathlib.Path(run_dir) / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"{self.path.parent} is being written by another pssnet train (PID {holder}); "
                            "wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def remove_stray_files(run_dir: pathlib.Path) -> list[pathlib.Path]:
    """Delete the temporary files an interrupted atomic write left in the run directory and its
    ``checkpoints/`` (call only while holding the :class:`RunLock`)."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if folder.is_dir():
            for path in folder.iterdir():
                if _STRAY.match(path.name) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
    return removed


def set_aside_checkpoints(rejected: Sequence[Rejected]) -> list[str]:
    """Rename each rejected checkpoint (:func:`~.checkpoint.find_checkpoint`) to ``*.damaged``,
    ``*.foreign`` (another run's) or ``*.misnamed``, so that no resume loads it and keeping the
    last N checkpoints never counts it, nor deletes a good checkpoint in its favour. Returns a
    note per file saying why."""
    notes = []
    for item in rejected:
        target = item.path.with_name(item.path.name + item.suffix)
        item.path.replace(target)
        notes.append(f"note: set aside {item.path}: {item.reason}; renamed to {target.name}")
    return notes


def saved_config(run_dir: pathlib.Path) -> Optional[dict[str, Any]]:
    """The settings in ``config.json`` (written when a run starts), or None without one."""
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is damaged (not JSON); run without --resume to start again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a pssnet config; run without --resume to start again")
    return data


def _label(opt: Any) -> str:
    return opt.flag or ".".join(opt.path)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "(none)"
    return "(unset)" if value is None else str(value)


def resume_config(saved: Mapping[str, Any], current: TrainConfig,
                  given: Optional[Collection[tuple[str, ...]]]) -> tuple[TrainConfig, list[str]]:
    """The configuration a resumed run continues under, and its harmless changes ("--max-iters 8 -> 16").

    The run's own (``saved``) settings, except where and how this process runs (options marked
    ``on_resume="local"``, taken from ``current``) and harmless changes (``on_resume="harmless"``).
    Only options in ``given`` (option paths; None: those that differ from the defaults) count as
    asked for. Any other change is refused with one UserError listing every difference."""
    config, defaults = TrainConfig.from_dict(saved), TrainConfig()
    refused, changed = [], []
    for opt in declared_options(TrainConfig):
        mode, new, old = opt.meta.get("on_resume"), opt.get(current), opt.get(config)
        if mode == "local":
            opt.set(config, new)
            continue
        asked = opt.path in given if given is not None else new != opt.get(defaults)
        if not asked or new == old:
            continue
        if mode == "data" and dataset_name(new) == dataset_name(old):
            mode = "harmless"  # moved data: the trainer checks it against the run's data fingerprint
        (changed if mode == "harmless" else refused).append(f"{_label(opt)} {_show(old)} -> {_show(new)}")
        if mode == "harmless":
            opt.set(config, new)
    if refused:
        raise UserError(f"--resume cannot change what this run trains ({', '.join(refused)}); drop those flags "
                        "to continue it, or train the new settings into a new --out")
    if any(text.startswith(_LENGTH_FLAGS) for text in changed):
        changed[-1] += " (the learning-rate and p/T schedules are recomputed for the new length)"
    return config, changed


def resume_command(run_dir: pathlib.Path, world_size: int) -> str:
    """The command that continues the run in ``run_dir`` with ``world_size`` processes."""
    if world_size > 1:
        return f"torchrun --nproc_per_node {world_size} -m pssnet train --out {run_dir} --resume"
    return f"pssnet train --out {run_dir} --resume"


DATA_CHANGES_NAME = "data-changes.jsonl"  # RUN/data-changes.jsonl: each change --accept-data-change let in


def check_data(checkpoint: Mapping[str, Any], fingerprint: str, spec: str, accept_change: bool = False) -> bool:
    """Refuse to resume on other data than the run trained on: the data at ``spec`` must have the
    fingerprint the checkpoint recorded (:func:`pssnet.data.data_fingerprint`), wherever it lies.
    A checkpoint written before fingerprints were recorded may resume on its own spec only.

    ``accept_change`` (``--accept-data-change``) lets other data through instead (files removed
    or replaced after a bad image); returns True when it did, for :func:`record_data_change`."""
    recorded, trained_on = checkpoint.get("data_fingerprint"), checkpoint["config"]["data"]
    if recorded is None or recorded.split(":")[0] != fingerprint.split(":")[0]:
        if spec != trained_on and not accept_change:
            raise UserError(f"this run's checkpoint does not record its data in a form this pssnet can check "
                            f"(written by another version), so --data {spec} cannot be checked against "
                            f"{trained_on}; resume with --data {trained_on}, or pass --accept-data-change")
        return spec != trained_on
    if recorded == fingerprint:
        return False
    if accept_change:
        return True
    raise UserError(f"the data at {spec} is not the data this run trained on ({trained_on}: its classes, "
                    "sizes, labels, images or file names differ); resume with that data, pass "
                    "--accept-data-change to continue on the data as it is now (after removing or replacing "
                    "files; the change is recorded), or train the new data into a new --out")


def record_data_change(run_dir: pathlib.Path, checkpoint: Mapping[str, Any], fingerprint: str,
                       spec: str) -> dict[str, Any]:
    """Append the change ``--accept-data-change`` let in to ``RUN/data-changes.jsonl`` (atomically:
    the file is rewritten whole) and return its row, which the metrics log records too."""
    row = {"event": "data_change", "iteration": int(checkpoint["iteration"]),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "data_before": checkpoint["config"]["data"],
           "data": spec, "fingerprint_before": checkpoint.get("data_fingerprint"), "fingerprint": fingerprint}
    path = run_dir / DATA_CHANGES_NAME
    try:
        before = path.read_text()
    except FileNotFoundError:
        before = ""
    if before and not before.endswith("\n"):
        before += "\n"  # a torn last line stays, apart from the new one
    write_text_atomic(path, before + json.dumps(row) + "\n")
    return row


def check_world_size(checkpoint: Mapping[str, Any], world_size: int, run_dir: pathlib.Path) -> None:
    """Refuse to resume with another number of processes: the data order, the global batch and the
    schedules all depend on it."""
    recorded = checkpoint.get("world_size")
    if recorded is None or int(recorded) == world_size:
        return
    saved = checkpoint["config"]  # a preset's batch_size is the global batch
    batch = int(saved["batch_size"]) // (int(recorded) if saved.get("batch_is_global") else 1)
    how = resume_command(run_dir, recorded) + ("" if recorded > 1 else " (one process, without torchrun)")
    raise UserError(f"this run was trained with {recorded} process(es) x batch {batch}, not {world_size}; "
                    f"resume it with {how}")
