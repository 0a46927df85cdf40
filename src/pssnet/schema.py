"""Field checks for values read from files and API arguments: present, typed, finite, in range.

Each helper returns the checked value or raises :class:`FieldError` naming the field (``where``
is its place, e.g. ``"subnets[2].resources.flops"``). Loaders of files catch it and add the
file name and the fix, so that a damaged bundle or table is one line, never a traceback.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, Optional, Sequence

from .errors import UserError


class FieldError(UserError, ValueError):
    """A field (function argument or file entry) that is missing, of the wrong type or out of
    range: a user mistake (one line in the CLI) that library callers may catch as ``ValueError``."""


def require(data: Mapping[str, Any], key: str, where: str = "") -> Any:
    """``data[key]``, or a :class:`FieldError` saying the field is missing."""
    if not isinstance(data, Mapping):
        raise FieldError(f"{where or 'the data'} must be a mapping, got {type(data).__name__}")
    if key not in data:
        raise FieldError(f"field '{_join(where, key)}' is missing")
    return data[key]


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError(f"field '{where}' must be a mapping, got {type(value).__name__}")
    return value


def sequence(value: Any, where: str, length: Optional[int] = None) -> Sequence[Any]:
    """A list or tuple (of ``length`` items when given)."""
    if not isinstance(value, (list, tuple)):
        raise FieldError(f"field '{where}' must be a list, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise FieldError(f"field '{where}' must have {length} items, got {len(value)}")
    return value


def string(value: Any, where: str, optional: bool = False) -> Optional[str]:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldError(f"field '{where}' must be a string, got {_show(value)}")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise FieldError(f"field '{where}' must be true or false, got {_show(value)}")
    return value


def number(value: Any, where: str, low: Optional[float] = None, high: Optional[float] = None,
           low_open: bool = False, high_open: bool = False, optional: bool = False) -> Optional[float]:
    """A finite real number in ``[low, high]`` (``low_open``/``high_open`` exclude the ends)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FieldError(f"field '{where}' must be a number, got {_show(value)}")
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits (JSON reads them exactly)
        value = math.inf
    if not math.isfinite(value):
        raise FieldError(f"field '{where}' must be a finite number, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise FieldError(f"field '{where}' must be {_interval(low, high, low_open, high_open)}, got {value:g}")
    return value


def integer(value: Any, where: str, low: Optional[int] = None, high: Optional[int] = None,
            optional: bool = False) -> Optional[int]:
    """An integer (an integral float such as ``32.0`` is accepted, ``30.7`` is not) in ``[low, high]``."""
    if value is None and optional:
        return None
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and math.isfinite(float(value)) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise FieldError(f"field '{where}' must be an integer, got {_show(value)}")
    value = int(value)
    if low == 1 and high is None and value < 1:
        raise FieldError(f"field '{where}' must be a positive integer, got {_show(value)}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise FieldError(f"field '{where}' must be {_interval(low, high, False, False)}, got {_show(value)}")
    return value


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"{'>' if low_open else '>='} {low:g}"
    if low is None:
        return f"{'<' if high_open else '<='} {high:g}"
    return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    text = repr(value)
    return f"{text[:40]}..." if len(text) > 43 else text
