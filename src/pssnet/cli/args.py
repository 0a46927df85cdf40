"""Argument types for hand-written argparse parsers (the scripts in ``benchmarks/``): numbers
checked for type, finiteness and range.

Use them as ``type=`` of ``add_argument``; argparse then names the flag in a one-line error
(``error: argument --threads: must be a positive integer, got '-1'``). ``pssnet``'s own commands
declare their settings as options instead (:mod:`pssnet.options`, :mod:`.dataclass_args`).
"""

from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

from ..options import MAX_SEED


def int_in(low: Optional[int] = None, high: Optional[int] = None, what: str = "an integer") -> Callable[[str], int]:
    """An argparse type: an integer in ``[low, high]`` (either end open when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'")
        return value

    return parse


def float_in(low: Optional[float] = None, high: Optional[float] = None, low_open: bool = False,
             what: str = "a finite number") -> Callable[[str], float]:
    """An argparse type: a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        too_low = low is not None and (value <= low if low_open else value < low)
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got '{text}'")
        return value

    return parse


positive_int = int_in(1, what="a positive integer")
non_negative_int = int_in(0, what="an integer >= 0")
seed = int_in(0, MAX_SEED, what=f"an integer from 0 to {MAX_SEED}")
finite_float = float_in(what="a finite number")
positive_float = float_in(0.0, low_open=True, what="a finite number > 0")
non_negative_float = float_in(0.0, what="a finite number >= 0")
