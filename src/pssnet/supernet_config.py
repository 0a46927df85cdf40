"""What recreates a supernet: :class:`SupernetConfig`, the ``model_config`` of checkpoints and bundles.

A frozen, checked value (like timm's ``PretrainedCfg``): the architecture's name and the
options of its layout and search space. It builds the :class:`~pssnet.layout.Layout` and the
:class:`~pssnet.space.SearchSpace` without building any module, and converts to and from the
plain dict that files store.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from . import schema
from .architectures import arch_info
from .errors import UserError
from .layout import Layout
from .schema import FieldError
from .space import SearchSpace

# Stored model_configs written before classifier dropout existed lack its key; it defaults to 0.
# Those written before layout versions existed lack "layout_version": they are version 1.
_OPTIONAL_KEYS = ("dropout", "layout_version")
# Upper bounds, checked before anything is allocated: a file's model_config cannot ask for a
# 10 GB resolution list or a classifier larger than any real data set needs.
MAX_NUM_CLASSES = 100_000
MAX_IN_CHANS = 64
MAX_RESOLUTION = 2048
MAX_WIDTH = 8.0


def _at_most(value: Any, where: str, high: int) -> int:
    """A positive integer no larger than ``high``."""
    value = schema.integer(value, where, low=1)
    if value > high:
        raise FieldError(f"field '{where}' must be at most {high}, got {value}")
    return value


class RetiredLayoutError(UserError):
    """Weights trained for an earlier layout of an architecture (one line in the CLI). Not a
    FieldError: the file is sound, so loaders pass the message on instead of calling it damaged."""


@dataclass(frozen=True)
class SupernetConfig:
    """A registered architecture (:data:`pssnet.architectures.ARCHITECTURES`) and its options.

    ``resolutions`` is ``(min, max, step)``; None takes the architecture's default for
    ``small_input``, and the field then holds that default. ``dropout`` is the classifier's
    dropout probability (it replaces the layout's); the default 0 keeps training forwards
    deterministic, so a subnet's reused training logits are its score. ``layout_version`` None
    takes the architecture's current layout (and holds its number); an earlier one raises
    :class:`RetiredLayoutError`. Every field is checked (a :class:`~pssnet.schema.FieldError`
    names it) and stored as a plain int, float, bool or tuple.
    """

    arch: str
    num_classes: int = 1000
    in_chans: int = 3
    small_input: bool = False
    resolutions: Optional[tuple[int, int, int]] = None
    width_range: tuple[float, float] = (0.75, 1.0)
    dropout: float = 0.0
    layout_version: Optional[int] = None

    def __post_init__(self) -> None:
        info = arch_info(self.arch)
        version = schema.integer(self.layout_version, "layout_version", low=1, optional=True)
        if version is not None and version != info.layout_version:
            raise _retired(self.arch, version, info.retired_layouts)
        object.__setattr__(self, "layout_version", info.layout_version)
        small_input = schema.boolean(self.small_input, "small_input")
        resolutions = self.resolutions
        if resolutions is None:
            resolutions = info.small_resolutions if small_input else info.imagenet_resolutions
        checked = {
            "num_classes": _at_most(self.num_classes, "num_classes", MAX_NUM_CLASSES),
            "in_chans": _at_most(self.in_chans, "in_chans", MAX_IN_CHANS),
            "small_input": small_input,
            "resolutions": tuple(_at_most(v, f"resolutions[{i}]", MAX_RESOLUTION)
                                 for i, v in enumerate(schema.sequence(resolutions, "resolutions", 3))),
            "width_range": tuple(schema.number(v, f"width_range[{i}]", 0.0, MAX_WIDTH, low_open=True)
                                 for i, v in enumerate(schema.sequence(self.width_range, "width_range", 2))),
            "dropout": schema.number(self.dropout, "dropout", 0.0, 1.0, high_open=True),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        self.space()  # a bad resolution or width range is refused here, not at first use

    def layout(self) -> Layout:
        """The architecture expanded for these classes, channels and input size."""
        layout = arch_info(self.arch).layout(self.num_classes, self.in_chans, self.small_input)
        return dataclasses.replace(layout, dropout=self.dropout)

    def space(self) -> SearchSpace:
        """The search space: the resolutions and width range over the layout's groups."""
        low, high, step = self.resolutions
        return SearchSpace(self.layout().group_names, low, high, step, self.width_range[0], self.width_range[1])

    def to_dict(self) -> dict[str, Any]:
        """The stored ``model_config`` (lists for the tuples); :meth:`from_dict` inverts it."""
        return {"arch": self.arch, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "small_input": self.small_input, "resolutions": list(self.resolutions),
                "width_range": list(self.width_range), "dropout": self.dropout,
                "layout_version": self.layout_version}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SupernetConfig":
        """The config of a stored ``model_config``: an unknown or missing key, or a bad value,
        is a :class:`~pssnet.schema.FieldError` naming it."""
        data = schema.mapping(data, "model_config")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [repr(k) for k in data if k not in names]
        if unknown:
            raise FieldError(f"model_config has unknown field(s) {', '.join(unknown)}; "
                             f"its fields are {', '.join(names)}")
        missing = [k for k in names if k not in data and k not in _OPTIONAL_KEYS]
        if missing:
            raise FieldError(f"model_config lacks field(s) {', '.join(missing)}")
        return cls(**{"layout_version": 1, **data})


def _retired(arch: str, version: int, retired: tuple[str, ...]) -> UserError:
    """The one-line refusal of a model_config of layout ``version`` (not the current one)."""
    if version > len(retired) + 1:
        return FieldError(f"field 'layout_version' is {version}, but this pssnet knows {arch} layouts up to "
                          f"{len(retired) + 1}; use the pssnet version that wrote it")
    return RetiredLayoutError(f"this model was trained with {retired[version - 1]}; this pssnet builds another "
                              "network: train it again, or use the pssnet version that trained it")
