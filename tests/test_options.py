"""One configuration idiom: every command's flags are generated from typed configuration fields,
whose bounds hold the same on the command line and in Python."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

import pytest

from pssnet.cli import build_parser, main
from pssnet.cli.adapt_cmd import AdaptCommand
from pssnet.cli.dataclass_args import add_config_flags, config_from_args, flags_of
from pssnet.cli.demo_cmd import DemoCommand
from pssnet.cli.eval_cmd import EvalCommand
from pssnet.cli.export_cmd import ExportCommand
from pssnet.cli.info_cmd import InfoCommand
from pssnet.cli.lut_cmd import LutBuildCommand, LutShowCommand
from pssnet.errors import UserError
from pssnet.evaluation import EvalConfig
from pssnet.options import check_bounds, option
from pssnet.serving.config import ServeConfig, SloConfig
from pssnet.training.config import TrainConfig

COMMANDS = {("train",): TrainConfig, ("eval",): EvalCommand, ("export",): ExportCommand, ("adapt",): AdaptCommand,
            ("info",): InfoCommand, ("demo",): DemoCommand, ("serve",): ServeConfig,
            ("lut", "build"): LutBuildCommand, ("lut", "show"): LutShowCommand}
# What a command takes that is an action, not a setting.
ACTIONS = {("train",): {"--resume", "--accept-data-change"}}


def command_parser(path: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_every_command_is_covered():
    top = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    covered = {path[0] for path in COMMANDS}
    assert set(top.choices) == covered
    lut = next(a for a in command_parser(("lut",))._actions if isinstance(a, argparse._SubParsersAction))
    assert {("lut", name) for name in lut.choices} <= set(COMMANDS)


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_flag_of_a_command_comes_from_its_config(path):
    parser = command_parser(path)
    flags = flags_of(COMMANDS[path])
    generated = {f.name for f in flags if not f.positional} | {f.meta["short"] for f in flags if "short" in f.meta}
    generated |= {"--no-" + f.name[2:] for f in flags if f.options[0].type is bool and not f.is_switch}  # --x/--no-x
    taken = {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}
    assert taken == generated | ACTIONS.get(path, set())
    assert [a.dest for a in parser._actions if not a.option_strings] == [f.name for f in flags if f.positional]
    # no range checked by a hand-written argparse type: the bounds live in the fields only
    assert {a.type for a in parser._actions} <= {None, int, float, str}


@pytest.mark.parametrize("value, accepted", [("0.5", True), ("0.999", True), ("1.0", False), ("0.3", False),
                                             ("nan", False)])
def test_the_quantile_limits_of_serve_are_the_slo_configs(value, accepted, tmp_path, capsys):
    """--quantile accepted (0, 1] on the command line while SloConfig required [0.5, 1)."""
    code = main(["serve", str(tmp_path / "missing.pt"), "--slo-ms", "10", "--quantile", value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert ("does not exist" in err) == accepted  # an accepted value gets as far as the bundle
    assert err.startswith("pssnet serve: error: --quantile must") != accepted, err
    try:
        SloConfig(target_ms=10, quantile=float(value))
    except UserError:
        assert not accepted
    else:
        assert accepted
    assert "[0.5, 1)" in command_parser(("serve",)).format_help()


@pytest.mark.parametrize("value, accepted", [("1", True), ("0", False), ("-5", False)])
def test_the_holdout_limits_of_eval_are_the_eval_configs(value, accepted, tmp_path, capsys):
    """--holdout accepted 0 on the command line while EvalConfig required at least 1."""
    code = main(["eval", str(tmp_path / "no-run"), "--holdout", value])
    err = capsys.readouterr().err.strip()
    assert code == 2 and ("does not exist" in err) == accepted
    assert (f"--holdout must be at least 1, got {value}" in err) != accepted
    try:
        EvalConfig(holdout=int(value))
    except UserError:
        assert not accepted
    else:
        assert accepted


@dataclass(frozen=True)
class Inner:
    target: float = option(flag="--target", above=0.0, required=True, help="a required number")
    knob: int = option(3, flag=None, min=1, help="not on the command line")

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclass(frozen=True)
class Outer:
    source: str = option(positional=True, metavar="SOURCE", help="where from")
    inner: Inner = field(default_factory=lambda: Inner(1.0))
    output: str = option("", short="-o", help="where to")
    others: list[str] = option(nargs="+", metavar="OTHER", default_factory=list, help="several after one flag")
    tags: list[str] = option(flag="--tag", repeat=True, default_factory=list, help="one per flag")
    verbose: bool = option(False, switch=True, help="turn it on")
    colour: bool = option(True, flag="--no-colour", help="turn it off")
    size: Optional[list[int]] = option(None, metavar="W:H", example="4:3", help="two parts")


def parse(*argv: str) -> Outer:
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Outer)
    return config_from_args(Outer, parser.parse_args(argv))


def test_a_frozen_nested_config_is_built_from_the_flags_given():
    config = parse("in", "--target", "2.5", "-o", "out", "--others", "a", "b", "--tag", "x", "--tag", "y",
                   "--verbose", "--no-colour", "--size", "4:3")
    assert config == Outer("in", Inner(2.5), "out", ["a", "b"], ["x", "y"], True, False, [4, 3])
    plain = parse("in", "--target", "1")
    assert plain == Outer("in", Inner(1.0))  # flags not given keep the defaults
    with pytest.raises(UserError, match="--target must be above 0.0, got -1.0"):
        parse("in", "--target", "-1")
    with pytest.raises(UserError, match="knob must be at least 1"):  # no flag: named by its field
        Inner(1.0, knob=0)
    with pytest.raises(UserError, match="bad --size '4'; write W:H, e.g. 4:3"):
        parse("in", "--target", "1", "--size", "4")
    with pytest.raises(SystemExit):  # argparse: the required flag is missing
        parse("in")
