"""Files pssnet writes and reads: atomic writes (every file appears whole or not at all), the
checks of output paths, and the one safe reader of pssnet's torch files.

A killed process leaves at most a stray temporary file next to the target, never a truncated
checkpoint, table or bundle in its place; a full disk, a read-only directory or a path under a
file is a one-line :class:`UserError` naming the file and the fix, with the older file kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
import warnings
from pathlib import Path
from typing import Any, Callable, Union

import torch

from .errors import UserError

PathLike = Union[str, os.PathLike]


_DENIED = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EROFS: "read-only file system"}
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# How torch.save reports a failed write (a full disk) from its zip writer, as a RuntimeError.
_TORCH_WRITE_FAILURES = ("unexpected pos", "No space left", "file write failed")


def os_error_message(exc: OSError, path: PathLike | None = None, action: str = "write") -> str | None:
    """One line naming the file and the fix for an ``OSError`` a user's path causes (no
    permission, read-only, disk full, a directory or a file in the way), else None.

    ``path`` (default: the error's own file name) is the file the message names."""
    name = path if path is not None else exc.filename
    if name is None:
        return None
    code = exc.errno
    if code in _DENIED:
        return f"cannot {action} {name}: {_DENIED[code]}; choose another location or fix its permissions"
    if code in _NO_SPACE:
        return no_space_message(name)
    if code == errno.EISDIR:
        return f"{name} is a directory; give a file name"
    if code == errno.ENOTDIR:
        return f"cannot {action} {name}: a part of the path is a file, not a directory; choose another path"
    if code == errno.EEXIST:
        return f"cannot {action} {name}: a file is in the way of a directory; choose another path"
    if code == errno.ENOENT:
        return f"{name} does not exist; check the path"
    if code == errno.ENAMETOOLONG:
        return f"cannot {action} {name}: the name is too long; choose a shorter path"
    return None


def no_space_message(path: PathLike) -> str:
    return (f"no space left on {_mount_point(Path(path))} while writing {path}; "
            "free some space or choose another output location")


def _mount_point(path: Path) -> str:
    """The mount point of the file system ``path`` is (or would be) on."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return str(path)


def _write_error(exc: BaseException, path: Path) -> UserError | None:
    """The user's view of an exception raised while writing ``path``, or None when it is not a
    file-system fault of the user's location (then it stays what it is: a bug or an interrupt)."""
    if isinstance(exc, OSError):
        message = os_error_message(exc, path)
        return UserError(message) if message else None
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURES):
        return UserError(no_space_message(path))
    return None


def make_dirs(path: PathLike) -> Path:
    """``mkdir -p path``; a file in the way or a read-only location is a :class:`UserError`."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # exist_ok only forgives an existing directory
        raise UserError(f"cannot create the directory {path}: a file of that name exists; "
                        "choose another path") from None
    except OSError as exc:
        message = os_error_message(exc, path, "create the directory")
        if message is None:
            raise
        raise UserError(message) from exc
    return path


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, flush it to disk, then
    rename it over ``path``. On any failure the temporary file is removed and an older ``path``
    stays as it was; a file-system fault (disk full, read-only, ...) is a :class:`UserError`."""
    path = Path(path)
    make_dirs(path.parent)
    # A unique name that `write` creates itself: the file gets the user's usual permissions
    # (tempfile.mkstemp would make every bundle and table private to its owner).
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"))
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        error = _write_error(exc, path)
        if error is None:
            raise
        raise error from exc


def write_text_atomic(path: PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomic(path: PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def output_dir(path: PathLike | None, flag: str = "--out") -> Path:
    """``path`` as the directory to write into, or a :class:`UserError` naming ``flag`` when it is
    missing or names something that is not a directory."""
    if path is None or not str(path):
        raise UserError(f"no output directory given; pass {flag} DIR")
    path = Path(path)
    _check_text_path(path, flag)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a directory; choose a directory")
    _check_writable_location(path, flag, "a directory", path)
    return path


def output_file(path: PathLike, flag: str = "-o") -> Path:
    """``path`` as a file to write, or a :class:`UserError` naming ``flag`` when it is a
    directory, lies under a file, or its directory cannot be written."""
    path = Path(path)
    _check_text_path(path, flag)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give a file name (e.g. one inside it)")
    _check_writable_location(path.parent, flag, "a file", path)
    return path


def _check_text_path(path: Path, flag: str) -> None:
    """Refuse an output path that is not UTF-8 (on POSIX any bytes but ``/`` and NUL may name a
    file): pssnet writes its output paths into logs, reports, TensorBoard and bundles, all text,
    and the run's files would fail to write there part-way. Refused before anything is created."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = repr(os.fsencode(path))[2:-1]  # the bytes as escapes, e.g. bad\xffname
        raise UserError(f"{flag} {shown}: the path is not UTF-8 text; choose a path whose names are "
                        "UTF-8") from None


def _nearest_existing(path: Path, flag: str, named: Path) -> Path:
    """The nearest path at or above ``path`` that exists; a symbolic-link loop on the way is a
    :class:`UserError` (``Path.exists`` reports a loop as missing, and ``mkdir`` then fails)."""
    existing = path.absolute()
    while existing != existing.parent:
        try:
            os.stat(existing)
            return existing
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UserError(f"{flag} {named}: {_loop_link(existing)} is a loop of symbolic links; "
                                "fix the link or choose another path") from None
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                raise
        existing = existing.parent
    return existing


def _loop_link(path: Path) -> Path:
    """The shortest prefix of ``path`` (which fails with ``ELOOP``) that fails so: the link in a loop."""
    for prefix in reversed(path.parents):
        if prefix != prefix.parent:
            try:
                os.stat(prefix)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    return prefix
    return path


def _check_writable_location(directory: Path, flag: str, what: str, named: Path) -> None:
    """The nearest existing directory at or above ``directory`` must be a writable directory; the
    messages name ``named``, the path the user gave."""
    existing = _nearest_existing(directory, flag, named)
    if not existing.is_dir():
        raise UserError(f"{flag} {named} is under the file {existing}, not a directory; choose {what} elsewhere")
    if not os.access(existing, os.W_OK | os.X_OK):  # also false on a read-only or immutable file system
        raise UserError(f"{flag} {named}: cannot write in {existing} (permission denied or read-only); "
                        f"choose {what} elsewhere")


def save_atomic(obj: Any, path: PathLike) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_weights_only(path: PathLike, what: str, hint: str) -> Any:
    """``torch.load(weights_only=True)`` on the CPU; a missing or unreadable file is a one-line
    :class:`UserError` naming ``what`` and ending in ``hint``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} '{path}' does not exist; {hint}")
    try:
        with warnings.catch_warnings():
            # A refused pickle (protocol 4 or 5) first draws torch's two-line UserWarning about
            # the protocol; the one-line error below says all the user needs to know.
            warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file, or not a weights_only-safe file
        raise UserError(f"cannot read {what} '{path}' ({type(exc).__name__}); {hint}") from None


def load_plain(path: PathLike, what: str, formats: Union[str, tuple[str, ...]], hint: str) -> dict:
    """``torch.load(weights_only=True)`` of a pssnet file whose ``"format"`` is one of
    ``formats``; every failure is a one-line :class:`UserError` ending in ``hint``."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    data = load_weights_only(path, what, hint)
    if not isinstance(data, dict) or data.get("format") not in formats:
        raise UserError(f"'{path}' is not a {what} (format {' or '.join(formats)}); {hint}")
    return data
