"""Files pssnet writes and reads: atomic writes (every file appears whole or not at all), the
check of an output directory, and the one safe reader of pssnet's torch files.

A killed process or a full disk leaves at most a stray temporary file next to the target, never
a truncated checkpoint, table or bundle in its place.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable, Union

import torch

from .errors import UserError

PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, flush it to disk, then
    rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name that `write` creates itself: the file gets the user's usual permissions
    # (tempfile.mkstemp would make every bundle and table private to its owner).
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def output_dir(path: PathLike | None, flag: str = "--out") -> Path:
    """``path`` as the directory to write into, or a :class:`UserError` naming ``flag`` when it is
    missing or names something that is not a directory."""
    if path is None or not str(path):
        raise UserError(f"no output directory given; pass {flag} DIR")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a directory; choose a directory")
    return path


def save_atomic(obj: Any, path: PathLike) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_plain(path: PathLike, what: str, formats: Union[str, tuple[str, ...]], hint: str) -> dict:
    """``torch.load(weights_only=True)`` of a pssnet file whose ``"format"`` is one of
    ``formats``; every failure is a one-line :class:`UserError` ending in ``hint``."""
    path = Path(path)
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; {hint}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file, or not a weights_only-safe file
        raise UserError(f"cannot read {what} '{path}' ({type(exc).__name__}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") not in formats:
        raise UserError(f"'{path}' is not a {what} (format {' or '.join(formats)}); {hint}")
    return data
