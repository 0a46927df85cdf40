"""Options: configuration fields that declare their own flag, help text and bounds.

A field made with :func:`option` carries everything the command line and the validation need in
its metadata, so a setting is written once (see ``pssnet.cli.dataclass_args`` for the flags).
Metadata keys:

``help``     the flag's help text (required);
``flag``     the flag's name; default ``--field-name``; ``None``: not on the command line. A bool
             field gets ``--x/--no-x``, unless its flag starts with ``--no-`` (a switch that turns it
             off). Several fields sharing one flag are given together as ``A:B`` (e.g. ``--p-range``);
``group``    the help section the flag is listed in;
``metavar``, ``choices`` (a sequence, or a callable returning one, resolved when the parser is
             built), ``required``;
``repeat``   a list field whose flag may be given several times, one element each; any other list
             field is one ``A:B:C`` value with as many parts as ``metavar`` has;
``example``  a valid ``A:B:C`` value, quoted when a value is malformed;
``min``      the smallest allowed value, checked by :func:`check_bounds`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Union

from ..errors import UserError


def option(default: Any = dataclasses.MISSING, *, help: str, default_factory: Any = dataclasses.MISSING,
           **meta: Any) -> Any:
    """A dataclass field with its command-line ``help`` and the metadata keys listed above."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"help": help, **meta})


@dataclass(frozen=True)
class Option:
    """One leaf field of a (nested) configuration dataclass."""

    path: tuple[str, ...]  # ("recipe", "lr") for TrainConfig.recipe.lr
    type: Any  # the annotation without Optional, e.g. int or list[str]
    optional: bool  # None is a valid value (for flags: "not given" keeps the default)
    meta: Mapping[str, Any]

    @property
    def flag(self) -> Optional[str]:
        return self.meta.get("flag", "--" + self.path[-1].replace("_", "-"))

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.type) is list

    @property
    def element_type(self) -> Any:
        return typing.get_args(self.type)[0] if self.is_list else self.type

    def get(self, config: Any) -> Any:
        for name in self.path:
            config = getattr(config, name)
        return config

    def set(self, config: Any, value: Any) -> None:
        for name in self.path[:-1]:
            config = getattr(config, name)
        setattr(config, self.path[-1], value)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return annotation, False


def declared_options(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[Option]:
    """Every leaf field of ``cls`` in declaration order; nested dataclass fields are expanded."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        annotation, optional = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(annotation):
            yield from declared_options(annotation, prefix + (f.name,))
        else:
            yield Option(prefix + (f.name,), annotation, optional, f.metadata)


def check_bounds(config: Any) -> None:
    """Raise a UserError for the first option whose value is below its declared ``min``."""
    for opt in declared_options(type(config)):
        low, value = opt.meta.get("min"), opt.get(config)
        if low is not None and value is not None and value < low:
            name = opt.flag or ".".join(opt.path)
            raise UserError(f"{name} must be at least {low}, got {value}")
