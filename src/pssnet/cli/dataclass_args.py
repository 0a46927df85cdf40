"""Command-line flags generated from a configuration dataclass's options (``training.options``).

Every flag defaults to "not given" (None), so a flag changes the configuration only when it is
passed: defaults and presets stay in force otherwise.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import UserError
from ..training.options import Option, declared_options


@dataclass(frozen=True)
class Flag:
    """One command-line flag and the option(s) it sets (several: one ``A:B`` part each)."""

    name: str
    options: tuple[Option, ...]

    @property
    def dest(self) -> str:
        return self.name[2:].replace("-", "_")

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.options[0].meta)

    @property
    def turns_off(self) -> bool:
        """A ``--no-x`` switch of a bool option."""
        return self.options[0].type is bool and self.name.startswith("--no-")

    @property
    def parts(self) -> int:
        """How many ``:``-separated parts one value has (0: a plain value)."""
        if len(self.options) > 1:
            return len(self.options)
        opt = self.options[0]
        return len(self.meta.get("metavar", "").split(":")) if opt.is_list and not self.meta.get("repeat") else 0

    def add_to(self, group: argparse._ActionsContainer) -> None:
        meta, opt = self.meta, self.options[0]
        kwargs: dict[str, Any] = {"dest": self.dest, "help": meta["help"]}
        for key in ("metavar", "required"):
            if key in meta:
                kwargs[key] = meta[key]
        if "choices" in meta:
            choices = meta["choices"]
            kwargs["choices"] = list(choices() if callable(choices) else choices)
        if self.turns_off:
            kwargs["action"] = "store_true"
        elif opt.type is bool:
            kwargs.update(action=argparse.BooleanOptionalAction, default=None)
        elif meta.get("repeat"):
            kwargs.update(action="append", type=opt.element_type)
        elif not self.parts:
            kwargs["type"] = opt.type
        group.add_argument(self.name, **kwargs)

    def values(self, given: Any) -> list[Any]:
        """The value of each option from the parsed ``given`` (not None)."""
        if self.turns_off:
            return [False]
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


def apply_flags(config: Any, args: argparse.Namespace, flags: Iterable[Flag]) -> Any:
    """Set the options of ``config`` whose flag was given on the command line."""
    for flag in flags:
        given = getattr(args, flag.dest)
        if given is None or (given is False and flag.turns_off):
            continue
        for opt, value in zip(flag.options, flag.values(given)):
            opt.set(config, value)
    return config


def given_paths(args: argparse.Namespace, flags: Iterable[Flag]) -> set[tuple[str, ...]]:
    """The option paths (``("recipe", "lr")``) whose flag was given on the command line."""
    paths: set[tuple[str, ...]] = set()
    for flag in flags:
        given = getattr(args, flag.dest)
        if given is not None and not (given is False and flag.turns_off):
            paths.update(opt.path for opt in flag.options)
    return paths
