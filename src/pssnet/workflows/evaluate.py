"""The ``pssnet eval`` pipeline on run directories: read a run, evaluate it (and the runs it is
compared with), write ``eval.json``, the Pareto report and the deployment bundle.

It sits above the evaluator, the report, the bundle format, the data sets and the checkpoint
reader that it drives; none of them imports it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from ..constraints import Constraint
from ..data import load_data
from ..deploy import make_bundle, save_bundle, save_folder
from ..deploy.hub import HUB_EXTRA
from ..errors import UserError
from ..evaluation.evaluator import EvalConfig, evaluate_run
from ..evaluation.results import EvalResult, load_eval
from ..fileio import write_text_atomic
from ..report import write_report
from ..run_record import RunRecord
from ..options import Option, declared_options
from ..training.checkpoint import load_run
from ..training.config import TrainConfig, apply_preset
from ..training.run_dir import saved_config


def evaluate_run_dir(run_dir: Union[str, os.PathLike], config: EvalConfig,
                     out_dir: Union[str, os.PathLike, None] = None, compare: Sequence[Union[str, os.PathLike]] = (),
                     data_spec: Optional[str] = None, bundle: bool = True,
                     constraints: Optional[Sequence[Constraint]] = None) -> tuple[EvalResult, dict[str, Path]]:
    """``pssnet eval``: evaluate a run directory and write ``eval.json``, ``pareto.csv/md/png``
    and (``bundle=True``) ``adaptive.pt`` and the Hub folder ``adaptive/`` (with the ``hub``
    extra) into ``out_dir`` (default: the run directory).

    Runs given in ``compare`` are overlaid; their own ``eval.json`` is reused when it was made
    with the same settings (:func:`reuse_mismatch`), otherwise they are evaluated here with ``config``.
    """
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    run, data = _run_and_data(run_dir, data_spec)
    result, evaluator = evaluate_run(run, data, config, run_dir.name, constraints)
    result.settings["config"]["data"] = data_spec or run.data
    others = [_compare_result(Path(d), config, data_spec, result.constraints) for d in compare]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(result, out_dir, others)
    paths["json"] = out_dir / "eval.json"
    write_text_atomic(paths["json"], json.dumps(result.to_dict(), indent=1) + "\n")
    if bundle:
        paths["bundle"] = out_dir / "adaptive.pt"
        made = make_bundle(run, result, evaluator.stats, data.image_size, data.preprocessing,
                           training_record(run_dir, run))
        save_bundle(made, paths["bundle"])
        folder = _save_hub_folder(made, out_dir / "adaptive", paths.get("png"))
        if folder is not None:
            paths["folder"] = folder
    return result, paths


def _save_hub_folder(made: Mapping[str, Any], folder: Path, plot: Optional[Path]) -> Optional[Path]:
    """The bundle as a Hub folder too; without the hub extra a one-line note says so."""
    try:
        return save_folder(made, folder, plot, flag="--out")
    except UserError as exc:
        if HUB_EXTRA not in str(exc):
            raise
    print(f"note: safetensors is not installed, so no {folder}/ Hub folder was written (adaptive.pt was); "
          f"{HUB_EXTRA} for one", file=sys.stderr)
    return None


def training_record(run_dir: Path, run: RunRecord) -> dict[str, Any]:
    """How the run was trained, for the model card: data set, iterations, and the ``pssnet train``
    command that repeats it (from the run's ``config.json``; None without a readable one)."""
    try:
        settings = saved_config(run_dir)
    except UserError:
        settings = None
    command = training_command(TrainConfig.from_dict(settings)) if settings else None
    return {"command": command, "data": run.data, "iterations": run.iterations}


def training_command(config: TrainConfig) -> str:
    """The ``pssnet train`` command line of ``config``: its preset and every flag whose value
    differs from what the preset (or the default) gives."""
    baseline = TrainConfig()
    if config.preset:
        with contextlib.suppress(UserError):
            apply_preset(baseline, config.preset)
    by_flag: dict[str, list[Option]] = {}
    for opt in declared_options(TrainConfig):
        if opt.flag is not None and not opt.meta.get("positional"):
            by_flag.setdefault(opt.flag, []).append(opt)
    words = ["pssnet", "train"] + (["--preset", config.preset] if config.preset else [])
    for flag, opts in by_flag.items():
        values = [opt.get(config) for opt in opts]
        if values != [opt.get(baseline) for opt in opts] and None not in values:
            words += _flag_words(flag, opts[0], values)
    return " ".join(shlex.quote(str(word)) for word in words)


def _flag_words(flag: str, opt: Option, values: list[Any]) -> list[Any]:
    """The words that give ``values`` to ``flag`` (a switch, a repeated flag, A:B:C parts, ...)."""
    if len(values) > 1:  # several options behind one flag: A:B
        return [flag, ":".join(str(v) for v in values)]
    value = values[0]
    if opt.type is bool:
        if flag.startswith("--no-") or opt.meta.get("switch"):
            return [flag]  # a switch: it differs from the default only when given
        return [flag if value else "--no-" + flag[2:]]
    if opt.is_list and opt.meta.get("repeat"):
        return [word for item in value for word in (flag, item)]
    if opt.is_list and opt.meta.get("nargs"):
        return [flag, *value]
    if opt.is_list:
        return [flag, ":".join(str(v) for v in value)]
    return [flag, value]


def reuse_mismatch(saved: EvalResult, config: EvalConfig, data_spec: Optional[str]) -> Optional[str]:
    """Why ``saved`` cannot stand for an evaluation with ``config`` on ``data_spec`` (default:
    the data set the run trained on), or None when it can."""
    recorded: Mapping[str, Any] = saved.settings.get("config") or {}
    if not recorded:
        return "no recorded settings (written by an older pssnet eval)"
    wanted = {**config.selection_settings(), "data": data_spec or saved.settings.get("data")}
    differ = [k for k in wanted if recorded.get(k) != wanted[k]]
    if not differ:
        return None
    return (", ".join(f"{k}={recorded.get(k)!r}" for k in differ) + " instead of "
            + ", ".join(f"{k}={wanted[k]!r}" for k in differ))


def _compare_result(run_dir: Path, config: EvalConfig, data_spec: Optional[str],
                    constraints: Sequence[Constraint]) -> EvalResult:
    saved = run_dir / "eval.json"
    if saved.is_file():
        result = load_eval(saved)
        why = reuse_mismatch(result, config, data_spec)
        if why is None:
            return result
        print(f"evaluating {run_dir} again: its eval.json has {why}", file=sys.stderr)
    if not run_dir.is_dir():
        raise UserError(f"comparison run '{run_dir}' does not exist; pass a run directory to --compare")
    run, data = _run_and_data(run_dir, data_spec)
    result = evaluate_run(run, data, config, run_dir.name, None if run.pools else run.constraints or constraints)[0]
    result.settings["config"]["data"] = data_spec or run.data
    return result


def _run_and_data(run_dir: Path, data_spec: Optional[str]) -> tuple[RunRecord, Any]:
    """A run and the data set to evaluate it on (``data_spec``, default: the one it trained on)."""
    run = load_run(run_dir)
    spec = data_spec or run.data
    if not spec:
        raise UserError(f"{run_dir} does not name its data set; pass --data SPEC")
    if spec != run.data and run.holdout is not None:
        # The recorded held-out indices name images of the data set trained on, not of this one.
        run = dataclasses.replace(run, holdout=None)
    # A folder trained at --image-size is evaluated at that size too.
    return run, load_data(spec, run.image_size if spec == run.data else None)
