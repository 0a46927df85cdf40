"""Image files that cannot be read or decoded: the error and its one-line message."""

from __future__ import annotations

from PIL import UnidentifiedImageError

from ..errors import UserError


class CorruptImageError(UserError):
    """An image file of a folder data set that cannot be read or decoded.

    A DataLoader worker re-raises an exception as ``type(exc)(its traceback text)``; this class
    keeps only the original one-line message from that text, so that the CLI still prints one line."""

    def __init__(self, message: str) -> None:
        prefix = f"{type(self).__module__}.{type(self).__qualname__}: "
        lines = message.strip().splitlines()
        if len(lines) > 1 and lines[-1].startswith(prefix):
            message = lines[-1][len(prefix):]
        super().__init__(message)


def describe_unreadable(path: str, exc: BaseException) -> str:
    """The one-line message of an image file that failed to open or decode with ``exc``."""
    if isinstance(exc, UnidentifiedImageError):
        reason = "unknown format or damaged header"
    elif isinstance(exc, RuntimeError):  # torchvision's decoder says "decode_jpeg, FILE.cpp:LINE, what"
        parts = (str(exc).strip().splitlines() or [""])[-1].split(", ", 2)
        reason = parts[-1] or "damaged image data"
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{path} is not a readable image ({reason}); remove or replace it"
