"""The supernet options shared by ``pssnet info`` and ``pssnet lut build``."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import option


def _architecture_names() -> list[str]:
    from ..architectures import ARCHITECTURES

    return sorted(ARCHITECTURES)


@dataclass(frozen=True)
class SupernetOptions:
    """Which supernet a command shows or measures: architecture, classes, input channels, stem."""

    arch: str = option("", required=True, choices=_architecture_names, help="supernet architecture")
    num_classes: int = option(1000, min=1, help="classifier outputs (default 1000)")
    in_chans: int = option(3, min=1, help="input channels (default 3)")
    small_input: bool = option(False, switch=True, help="stride-1 stem for 28-32 px inputs")
