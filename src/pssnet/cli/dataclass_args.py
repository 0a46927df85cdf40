"""Command-line flags generated from a configuration dataclass's options (:mod:`pssnet.options`).

Every flag defaults to "not given" (None), so a flag changes the configuration only when it is
passed: defaults and presets stay in force otherwise. Every command declares its settings this
way: :func:`add_config_flags` adds a configuration class's flags to its parser and
:func:`config_from_args` builds the configuration from what was given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..errors import UserError
from ..options import Option, build_config, check_bounds, declared_options


@dataclass(frozen=True)
class Flag:
    """One command-line flag and the option(s) it sets (several: one ``A:B`` part each)."""

    name: str
    options: tuple[Option, ...]

    @property
    def dest(self) -> str:
        return self.name.lstrip("-").replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.name.startswith("-")

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.options[0].meta)

    @property
    def turns_off(self) -> bool:
        """A ``--no-x`` switch of a bool option."""
        return self.options[0].type is bool and self.name.startswith("--no-")

    @property
    def is_switch(self) -> bool:
        """A flag without a value that sets its bool option: ``--no-x`` to False, a ``switch`` to True."""
        return self.turns_off or (self.options[0].type is bool and bool(self.meta.get("switch")))

    @property
    def parts(self) -> int:
        """How many ``:``-separated parts one value has (0: a plain value)."""
        if len(self.options) > 1:
            return len(self.options)
        opt = self.options[0]
        one_value = opt.is_list and not (self.meta.get("repeat") or self.meta.get("nargs"))
        return len(self.meta.get("metavar", "").split(":")) if one_value else 0

    def add_to(self, group: argparse._ActionsContainer) -> None:
        meta, opt = self.meta, self.options[0]
        kwargs: dict[str, Any] = {"help": meta["help"]}
        for key in ("metavar", "required", "nargs"):
            if key in meta:
                kwargs[key] = meta[key]
        if "choices" in meta:
            choices = meta["choices"]
            kwargs["choices"] = list(choices() if callable(choices) else choices)
        if self.is_switch:
            kwargs["action"] = "store_true"
        elif opt.type is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=None)
        elif meta.get("repeat"):
            kwargs.update(action="append", type=opt.element_type)
        elif meta.get("nargs"):
            kwargs["type"] = opt.element_type
        elif not self.parts and isinstance(opt.type, type):  # Union[str, PathLike]: argparse's str
            kwargs["type"] = opt.type
        if self.positional:  # argparse names a positional's dest by its name
            group.add_argument(self.name, **kwargs)
        else:
            group.add_argument(*filter(None, (meta.get("short"), self.name)), dest=self.dest, **kwargs)

    def given(self, args: argparse.Namespace) -> bool:
        """Whether the flag was given on the command line (a switch: given as itself)."""
        value = getattr(args, self.dest)
        return value is not None and not (value is False and self.is_switch)

    def values(self, given: Any) -> list[Any]:
        """The value of each option from the parsed ``given`` (not None)."""
        if self.is_switch:
            return [not self.turns_off]
        if not self.parts:
            return [list(given) if isinstance(given, list) else given]
        types = [o.type for o in self.options] if len(self.options) > 1 else [self.options[0].element_type] * self.parts
        try:
            pieces = given.split(":")
            if len(pieces) != self.parts:
                raise ValueError
            parsed = [t(p) for t, p in zip(types, pieces)]
        except ValueError:
            raise UserError(f"bad {self.name} '{given}'; write {self.meta.get('metavar')}, "
                            f"e.g. {self.meta.get('example')}") from None
        return parsed if len(self.options) > 1 else [parsed]


def flags_of(cls: type) -> list[Flag]:
    """The flags of ``cls``'s options in declaration order (options with ``flag=None`` have none)."""
    by_name: dict[str, list[Option]] = {}
    for opt in declared_options(cls):
        if opt.flag is not None:
            by_name.setdefault(opt.flag, []).append(opt)
    return [Flag(name, tuple(opts)) for name, opts in by_name.items()]


def help_sections(parser: argparse.ArgumentParser, flags: Iterable[Flag]) -> dict[str, argparse._ArgumentGroup]:
    """One argument group per ``group`` title of ``flags``, in the order of first appearance."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for flag in flags:
        title = flag.meta.get("group")
        if title is not None and title not in sections:
            sections[title] = parser.add_argument_group(title)
    return sections


def add_flags(parser: argparse.ArgumentParser, flags: Iterable[Flag],
              sections: dict[str, argparse._ArgumentGroup] | None = None) -> None:
    """Add ``flags`` to the help section their ``group`` names (see :func:`help_sections`),
    section by section, each in declaration order; a flag without a group goes to ``parser``."""
    flags = list(flags)
    sections = {**help_sections(parser, flags), **(sections or {})}
    order = {title: i for i, title in enumerate(sections)}
    for flag in sorted(flags, key=lambda f: order.get(f.meta.get("group"), -1)):
        title = flag.meta.get("group")
        flag.add_to(parser if title is None else sections[title])


def given_values(args: argparse.Namespace, flags: Iterable[Flag]) -> Iterator[tuple[Option, Any]]:
    """Each option whose flag was given on the command line, with its value."""
    for flag in flags:
        if flag.given(args):
            yield from zip(flag.options, flag.values(getattr(args, flag.dest)))


def apply_flags(config: Any, args: argparse.Namespace, flags: Iterable[Flag]) -> Any:
    """Set the options of ``config`` whose flag was given on the command line."""
    for opt, value in given_values(args, flags):
        opt.set(config, value)
    return config


def given_paths(args: argparse.Namespace, flags: Iterable[Flag]) -> set[tuple[str, ...]]:
    """The option paths (``("recipe", "lr")``) whose flag was given on the command line."""
    return {opt.path for flag in flags if flag.given(args) for opt in flag.options}


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add the flags of configuration class ``cls`` to ``parser`` (a command's whole settings)."""
    add_flags(parser, flags_of(cls))


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """The ``cls`` of the flags given (:func:`add_config_flags`); other fields keep their defaults.
    Its own checks run as it is made, and every declared bound after: a bad value is a one-line
    UserError naming its flag."""
    return check_bounds(build_config(cls, {opt.path: value for opt, value in given_values(args, flags_of(cls))}))
