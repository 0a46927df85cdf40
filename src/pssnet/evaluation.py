"""Evaluation of a trained run: candidates per budget, held-out selection, test accuracy.

For every budget (one pool per constraint target) the top-k subnets of a PSS pool are the
candidates; a ``uniform`` run has no pools, so the same number of candidates per budget is
drawn from the space by rejection into the budget's bucket. Each candidate's BN statistics are
recalibrated, it is scored on a held-out split of the *training* images, and the best one per
budget is kept; only then is its test accuracy measured. Selecting on the test set itself (the
reference's way, which flatters the result) is available as ``select_on="test"``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from .calibration import bn_layers, bn_statistics, recalibrate_bn
from .constraints import Constraint, target_key
from .resources import ResourceMeter
from .data import load_data, split_train
from .errors import UserError
from .fileio import write_text_atomic
from .space import SearchSpace, Subnet, subnets_from_arrays
from .supernet import Supernet, create_supernet

SELECT_ON = ("holdout", "test")
# Datasets up to this size (bytes of input tensors) are held in memory once and reused for
# every candidate; larger ones are streamed.
_CACHE_BYTES = 1 << 30


@dataclass
class EvalConfig:
    """How a run is evaluated (the ``pssnet eval`` options)."""

    top_k: int = 5
    calib_batches: int = 16
    holdout: int = 2000
    select_on: str = "holdout"
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise UserError(f"--select-on must be one of {', '.join(SELECT_ON)}, got '{self.select_on}'")
        for name in ("top_k", "calib_batches", "holdout", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")


@dataclass
class Candidate:
    """One evaluated subnet and what is known about it."""

    subnet: Subnet
    resources: dict[str, float]
    score: Optional[float] = None  # pool score (PSS), None for searched candidates
    holdout_acc: Optional[float] = None
    test_acc: Optional[float] = None

    def to_dict(self) -> dict[str, Any]:
        return {"subnet": self.subnet.to_dict(), "key": self.subnet.key, "resources": dict(self.resources),
                "score": self.score, "holdout_acc": self.holdout_acc, "test_acc": self.test_acc}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        return cls(Subnet.from_dict(data["subnet"]), {k: float(v) for k, v in data["resources"].items()},
                   data.get("score"), data.get("holdout_acc"), data.get("test_acc"))


@dataclass
class BudgetResult:
    """The candidates of one budget (constraint kind and target) and the one kept."""

    kind: str
    target: float
    candidates: list[Candidate]
    selected: Optional[int] = None  # index into candidates

    @property
    def best(self) -> Optional[Candidate]:
        return None if self.selected is None else self.candidates[self.selected]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "selected": self.selected,
                "candidates": [c.to_dict() for c in self.candidates]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "BudgetResult":
        return cls(data["kind"], float(data["target"]), [Candidate.from_dict(c) for c in data["candidates"]],
                   data.get("selected"))


@dataclass
class EvalResult:
    """Everything ``pssnet eval`` measured for one run (saved as ``eval.json``)."""

    name: str
    sampler: str
    select_on: str
    constraints: list[Constraint]
    budgets: list[BudgetResult]
    extremes: dict[str, Candidate]  # "largest", "smallest"
    settings: dict[str, Any] = field(default_factory=dict)

    def retained(self) -> list[tuple[str, Candidate]]:
        """(label, candidate) of every subnet a deployment keeps: best per budget and the extremes."""
        out = [(f"{b.kind}={b.target:g}", b.best) for b in self.budgets if b.best is not None]
        return out + sorted(self.extremes.items())

    def to_dict(self) -> dict[str, Any]:
        return {"format": "pssnet-eval/1", "name": self.name, "sampler": self.sampler,
                "select_on": self.select_on, "constraints": [c.to_dict() for c in self.constraints],
                "budgets": [b.to_dict() for b in self.budgets],
                "extremes": {k: c.to_dict() for k, c in self.extremes.items()}, "settings": self.settings}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalResult":
        if data.get("format") != "pssnet-eval/1":
            raise UserError("not a pssnet evaluation file; run pssnet eval RUN_DIR to write one")
        return cls(data["name"], data["sampler"], data["select_on"],
                   [Constraint.from_dict(c) for c in data["constraints"]],
                   [BudgetResult.from_dict(b) for b in data["budgets"]],
                   {k: Candidate.from_dict(c) for k, c in data["extremes"].items()}, data.get("settings", {}))


# ----------------------------------------------------------------------------- data


class Batches:
    """Fixed batches of a dataset (same order every pass), held in memory when small."""

    def __init__(self, dataset: Dataset, batch_size: int, limit_batches: Optional[int] = None) -> None:
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        self.limit = limit_batches
        self._cache: Optional[list[tuple[torch.Tensor, torch.Tensor]]] = None
        first = dataset[0][0]
        count = len(dataset) if limit_batches is None else min(len(dataset), limit_batches * batch_size)
        if isinstance(first, torch.Tensor) and first.numel() * first.element_size() * count <= _CACHE_BYTES:
            self._cache = list(self._stream())

    def _stream(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (x, y) in enumerate(self.loader):
            if self.limit is not None and i >= self.limit:
                return
            yield x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self._cache) if self._cache is not None else self._stream()


@torch.no_grad()
def accuracy(net: torch.nn.Module, batches: Iterable, device: torch.device) -> float:
    """Top-1 accuracy (percent) of ``net`` in eval mode."""
    was_training = net.training
    net.eval()
    correct = total = 0
    try:
        for x, y in batches:
            pred = net(x.to(device, non_blocking=True)).argmax(1).cpu()
            correct += int((pred == y).sum())
            total += y.numel()
    finally:
        net.train(was_training)
    return 100.0 * correct / max(total, 1)


# ----------------------------------------------------------------------------- candidates


def pool_candidates(run: Mapping[str, Any], constraints: Sequence[Constraint], top_k: int
                    ) -> list[tuple[Constraint, float, list[tuple[Subnet, float]]]]:
    """(constraint, target, [(subnet, score), ...best first][:top_k]) of every non-empty pool."""
    pools = run.get("pools") or {}
    out = []
    for c in constraints:
        by_target = pools.get(c.kind, {})
        for t in c.targets:
            entries = by_target.get(target_key(t), [])
            if entries:
                out.append((c, t, [(Subnet.from_dict(e["subnet"]), float(e["score"])) for e in entries[:top_k]]))
    return out


def search_candidates(space: SearchSpace, meter: ResourceMeter, constraints: Sequence[Constraint],
                      per_budget: int, seed: int, draws: int = 20000, rounds: int = 5
                      ) -> list[tuple[Constraint, float, list[tuple[Subnet, None]]]]:
    """``per_budget`` distinct random subnets inside each budget's bucket (for runs without pools).

    Half the draws are uniform; half spread all multipliers around one random level, so that
    the extreme buckets, which uniform draws almost never reach, get candidates too.
    """
    rng = np.random.default_rng(seed)
    out = []
    for c in constraints:
        found: dict[float, dict[Subnet, None]] = {t: {} for t in c.targets}
        for _ in range(rounds):
            res, widths = _spread_draws(space, draws, rng)
            buckets = np.asarray(c.bucket_of(meter.measure_arrays(c.kind, res, widths)))
            for t, bag in found.items():
                if len(bag) >= per_budget:
                    continue
                rows = rng.permutation(np.flatnonzero(np.isclose(buckets, t)))
                for s in subnets_from_arrays(res[rows], widths[rows]):
                    bag.setdefault(s, None)
                    if len(bag) >= per_budget:
                        break
            if all(len(bag) >= per_budget for bag in found.values()):
                break
        out += [(c, t, [(s, None) for s in bag]) for t, bag in found.items() if bag]
    return out


def _spread_draws(space: SearchSpace, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    res, widths = space.sample_arrays(n, rng)
    half = n // 2
    level = rng.random(half)[:, None]
    noise = rng.normal(0.0, 0.15, size=(half, space.num_stages))
    lo, hi = space.min_width, space.max_width
    widths[:half] = np.round(lo + (hi - lo) * np.clip(level + noise, 0.0, 1.0), 3)
    choices = np.asarray(space.resolutions)
    pick = np.clip(np.rint(level[:, 0] * (len(choices) - 1) + rng.normal(0, 0.5, half)), 0, len(choices) - 1)
    res[:half] = choices[pick.astype(np.int64)]
    return res, widths


# ----------------------------------------------------------------------------- evaluation


class SubnetEvaluator:
    """Recalibrates and scores subnets of one supernet, caching statistics and accuracies."""

    def __init__(self, net: Supernet, calib: Batches, holdout: Batches, test: Batches,
                 device: torch.device) -> None:
        self.net, self.calib, self.holdout, self.test, self.device = net, calib, holdout, test, device
        self.stats: dict[Subnet, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._acc: dict[tuple[Subnet, str], float] = {}

    def activate(self, subnet: Subnet) -> None:
        """Make ``subnet`` active with its recalibrated BN statistics (computed once)."""
        self.net.set_subnet(subnet)
        stats = self.stats.get(subnet)
        if stats is None:
            recalibrate_bn(self.net, self.calib, device=self.device)
            self.stats[subnet] = bn_statistics(self.net)
            return
        with torch.no_grad():
            for name, bn in bn_layers(self.net):
                mean, var = stats[name]
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)

    def accuracy(self, subnet: Subnet, split: str) -> float:
        key = (subnet, split)
        if key not in self._acc:
            self.activate(subnet)
            self._acc[key] = accuracy(self.net, self.holdout if split == "holdout" else self.test, self.device)
        return self._acc[key]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use cpu, cuda, cuda:N or auto") from None


def meter_for(net: Supernet, luts: Mapping[str, Any] | None) -> ResourceMeter:
    """A resource meter with the latency tables embedded in a run or bundle."""
    tables = {}
    if luts:
        from .latency import LatencyTable

        tables = {kind: LatencyTable.from_dict(data) for kind, data in luts.items()}
    return ResourceMeter(net, tables)


def supernet_from_run(run: Mapping[str, Any], device: torch.device) -> Supernet:
    net = create_supernet(**run["model_config"])
    net.load_state_dict(run["state_dict"])
    return net.to(device).eval()


def evaluate_run(run: Mapping[str, Any], data, config: EvalConfig, name: str = "run",
                 constraints: Optional[Sequence[Constraint]] = None) -> tuple[EvalResult, SubnetEvaluator]:
    """Evaluate a run dict (the ``final.pt`` contract) on ``data`` (a DataBundle-like object
    with ``train_eval`` and ``test`` datasets). Returns the result and the evaluator, whose
    ``stats`` hold the recalibrated BN statistics of every evaluated subnet.

    ``constraints`` (default: the run's) are the budgets; a run with pools must use its own."""
    device = resolve_device(config.device)
    net = supernet_from_run(run, device)
    constraints = list(constraints or [Constraint.from_dict(c) for c in run.get("constraints", [])])
    if not constraints:
        raise UserError("the run declares no constraints; pass --constraint TYPE:START:STOP:STEP to pssnet eval")
    meter = meter_for(net, run.get("luts"))

    # A run that kept images out of training names them as {"count", "seed"} of split_train.
    kept_out = run.get("holdout") or {}
    holdout_idx, calib_idx = split_train(len(data.train_eval), int(kept_out.get("count", config.holdout)),
                                         config.calib_batches * config.batch_size,
                                         int(kept_out.get("seed", config.seed)))
    evaluator = SubnetEvaluator(
        net,
        calib=Batches(Subset(data.train_eval, calib_idx), config.batch_size),
        holdout=Batches(Subset(data.train_eval, holdout_idx), config.batch_size),
        test=Batches(data.test, config.batch_size),
        device=device,
    )
    sampler = str(run.get("sampler", "pss"))
    if run.get("pools"):
        groups = pool_candidates(run, constraints, config.top_k)
    else:  # uniform run: search each budget with as many candidates as a pool contributes
        groups = search_candidates(net.space, meter, constraints, config.top_k, config.seed)
    if not groups:
        raise UserError("no budget has candidates (empty pools, or constraints the space cannot reach); "
                        "check the run's --constraint ranges against pssnet info")
    budgets = [BudgetResult(c.kind, t, [Candidate(s, meter.measure_all(s), score) for s, score in group])
               for c, t, group in groups]
    extremes = {"largest": Candidate(net.space.largest(), meter.measure_all(net.space.largest())),
                "smallest": Candidate(net.space.smallest(), meter.measure_all(net.space.smallest()))}

    unique = list(dict.fromkeys([c.subnet for b in budgets for c in b.candidates]))
    split = config.select_on
    for subnet in tqdm(unique, desc=f"eval {name}: candidates on {split}", unit="subnet",
                       disable=not config.progress, leave=False):
        evaluator.accuracy(subnet, split)
    for b in budgets:
        for c in b.candidates:
            setattr(c, f"{split}_acc", evaluator.accuracy(c.subnet, split))
        b.selected = max(range(len(b.candidates)), key=lambda i: (getattr(b.candidates[i], f"{split}_acc"), -i))

    finals = list(dict.fromkeys([b.best.subnet for b in budgets] + [c.subnet for c in extremes.values()]))
    for subnet in tqdm(finals, desc=f"eval {name}: kept subnets", unit="subnet",
                       disable=not config.progress, leave=False):
        evaluator.accuracy(subnet, "holdout")
        evaluator.accuracy(subnet, "test")
    for c in [b.best for b in budgets] + list(extremes.values()):
        c.holdout_acc = evaluator.accuracy(c.subnet, "holdout")
        c.test_acc = evaluator.accuracy(c.subnet, "test")

    settings = {"top_k": config.top_k, "calib_batches": config.calib_batches, "batch_size": config.batch_size,
                "holdout": len(holdout_idx), "holdout_unseen": bool(kept_out), "test": len(data.test),
                "seed": config.seed,
                "data": run.get("data"), "iterations": run.get("iterations"), "run_seed": run.get("seed")}
    result = EvalResult(name, sampler, split, constraints, budgets, extremes, settings)
    return result, evaluator


# ----------------------------------------------------------------------------- run directories


def load_eval(path: Union[str, os.PathLike]) -> EvalResult:
    """Read an ``eval.json`` written by :func:`evaluate_run_dir`."""
    path = Path(path)
    try:
        return EvalResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read evaluation '{path}' ({type(exc).__name__}); re-run pssnet eval") from None


def _run_and_data(run_dir: Path, data_spec: Optional[str]) -> tuple[dict, Any]:
    """A run dict and the data set to evaluate it on (``data_spec``, default: the one it trained on)."""
    from .training.checkpoint import load_run

    run = load_run(run_dir)
    spec = data_spec or run.get("data")
    if not spec:
        raise UserError(f"{run_dir} does not name its data set; pass --data SPEC")
    if spec != run.get("data") and run.get("holdout"):
        # The recorded held-out indices name images of the data set trained on, not of this one.
        run = {**run, "holdout": None}
    return run, load_data(spec)


def evaluate_run_dir(run_dir: Union[str, os.PathLike], config: EvalConfig,
                     out_dir: Union[str, os.PathLike, None] = None, compare: Sequence[Union[str, os.PathLike]] = (),
                     data_spec: Optional[str] = None, bundle: bool = True,
                     constraints: Optional[Sequence[Constraint]] = None) -> tuple[EvalResult, dict[str, Path]]:
    """``pssnet eval``: evaluate a run directory and write ``eval.json``, ``pareto.csv/md/png``
    and (``bundle=True``) ``adaptive.pt`` into ``out_dir`` (default: the run directory).

    Runs given in ``compare`` are overlaid; their own ``eval.json`` is reused when it was made
    with the same selection split, otherwise they are evaluated here with ``config``.
    """
    from .deploy import make_bundle, save_bundle
    from .report import write_report

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    run, data = _run_and_data(run_dir, data_spec)
    result, evaluator = evaluate_run(run, data, config, run_dir.name, constraints)
    others = [_compare_result(Path(d), config, data_spec, result.constraints) for d in compare]

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(result, out_dir, others)
    paths["json"] = out_dir / "eval.json"
    write_text_atomic(paths["json"], json.dumps(result.to_dict(), indent=1) + "\n")
    if bundle:
        paths["bundle"] = out_dir / "adaptive.pt"
        save_bundle(make_bundle(run, result, evaluator.stats, data.image_size), paths["bundle"])
    return result, paths


def _compare_result(run_dir: Path, config: EvalConfig, data_spec: Optional[str],
                    constraints: Sequence[Constraint]) -> EvalResult:
    saved = run_dir / "eval.json"
    if saved.is_file():
        result = load_eval(saved)
        if result.select_on == config.select_on:
            return result
    if not run_dir.is_dir():
        raise UserError(f"comparison run '{run_dir}' does not exist; pass a run directory to --compare")
    run, data = _run_and_data(run_dir, data_spec)
    own = [Constraint.from_dict(c) for c in run.get("constraints", [])]
    return evaluate_run(run, data, config, run_dir.name, None if run.get("pools") else own or constraints)[0]
