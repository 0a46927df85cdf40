"""Options: configuration fields that declare their own flag, help text and bounds.

Every command's settings are dataclasses of such fields (``TrainConfig``, ``EvalConfig``,
``SloConfig``, ``ServeConfig``, ``MeasureSettings`` and the commands' own), so a setting and its
bounds are written once: ``pssnet.cli.dataclass_args`` generates the flags from them, and
:func:`check_bounds` checks a configuration however it was made (flags, presets, Python).
Metadata keys:

``help``     the flag's help text (required);
``flag``     the flag's name; default ``--field-name``; ``None``: not on the command line. A bool
             field gets ``--x/--no-x``, unless its flag starts with ``--no-`` (a switch that turns it
             off) or ``switch`` is set (a flag that only turns it on). Several fields sharing one
             flag are given together as ``A:B`` (e.g. ``--p-range``);
``positional`` the value is a positional argument (named by ``metavar``), not a flag;
``short``    a one-letter alias of the flag (``-o``);
``group``    the help section the flag is listed in;
``metavar``, ``choices`` (a sequence, or a callable returning one, resolved when the parser is
             built), ``required``;
``repeat``   a list field whose flag may be given several times, one element each; ``nargs``
             (``"+"``): a list field given as several values after one flag; any other list field
             is one ``A:B:C`` value with as many parts as ``metavar`` has;
``example``  a valid ``A:B:C`` value, quoted when a value is malformed;
``min``, ``max``  the smallest / largest allowed value; ``above``, ``below``: exclusive bounds.
             Checked by :func:`check_bounds` (on every element of a list), which also requires
             every float to be finite;
``on_resume`` what a ``--resume`` may do with the option: ``"local"`` (where and how this process
             runs; always taken from the command line), ``"harmless"`` (may change; reported),
             ``"data"`` (the data spec: may name another directory of the same kind of data, which
             the trainer then checks against the fingerprint the run recorded), or absent (fixed: a
             change alters what is trained and is refused).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Union

from .errors import UserError

# Seeds feed numpy's generators, which take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


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
        """``--field-name``, the declared flag, None (not on the command line), or the field's
        name for a positional argument."""
        if self.meta.get("positional"):
            return self.path[-1]
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


def build_config(cls: type, values: Mapping[tuple[str, ...], Any], prefix: tuple[str, ...] = ()) -> Any:
    """A ``cls`` made from ``values`` (option path -> value) and the defaults of the other fields,
    nested configurations alike. Every value goes to the constructor, so frozen classes, fields
    without a default and the classes' own checks (``__post_init__``) work as in Python."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        path = prefix + (f.name,)
        annotation, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(annotation):
            kwargs[f.name] = build_config(annotation, values, path)
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


def _bound_error(value: Any, meta: Mapping[str, Any]) -> Optional[str]:
    """Why ``value`` breaks the bounds in ``meta``, or None when it keeps them."""
    if isinstance(value, float) and not math.isfinite(value):
        return "be a finite number"
    checks = (("min", "at least", lambda v, b: v >= b), ("max", "at most", lambda v, b: v <= b),
              ("above", "above", lambda v, b: v > b), ("below", "below", lambda v, b: v < b))
    for key, words, holds in checks:
        bound = meta.get(key)
        if bound is not None and not holds(value, bound):
            return f"be {words} {bound}"
    return None


def check_bounds(config: Any) -> Any:
    """Raise a UserError naming the flag of the first option whose value (or one of whose list
    elements) breaks its declared bounds or, being a float, is not finite; else return ``config``."""
    for opt in declared_options(type(config)):
        value = opt.get(config)
        for item in (value if isinstance(value, list) else [value]):
            if item is None or isinstance(item, (bool, str)):
                continue
            problem = _bound_error(item, opt.meta)
            if problem:
                name = opt.flag if opt.flag and opt.flag.startswith("-") else ".".join(opt.path)
                raise UserError(f"{name} must {problem}, got {item}")
    return config
