"""The evaluator: recalibrate each candidate subnet's BN statistics, then measure it, and keep
the best per budget.

For every budget (one pool per constraint target) the top-k subnets of a PSS pool are the
candidates; a ``uniform`` run has no pools, so the same number of candidates per budget is
drawn from the space by rejection into the budget's bucket. Each candidate's BN statistics are
recalibrated, it is scored on a held-out split of the *training* images, and the best one per
budget is kept; only then is its test accuracy measured. Selecting on the test set itself (the
reference's way, which flatters the result) is available as ``select_on="test"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

import torch
from torch.utils.data import Subset
from tqdm import tqdm

from ..calibration import bn_layers, bn_statistics, recalibrate_bn
from ..constraints import Constraint
from ..devices import resolve_device
from ..resources import ResourceMeter
from ..data import split_train
from ..layout import canonicalize
from ..errors import UserError
from ..options import MAX_SEED, check_bounds, option
from ..latency import LatencyTable
from ..run_record import RunRecord
from ..space import Subnet
from ..supernet import Supernet
from .batches import CACHE_BYTES, Batches
from .candidates import pool_candidates, search_candidates
from .results import BudgetResult, Candidate, EvalResult

SELECT_ON = ("holdout", "test")


@dataclass
class EvalConfig:
    """How a run is evaluated (the ``pssnet eval`` options)."""

    top_k: int = option(5, min=1, help="candidates per budget (default 5)")
    calib_batches: int = option(16, min=1, help="BN recalibration batches per subnet (default 16)")
    holdout: int = option(2000, min=1, help="training images held out for selection when the run kept none out "
                                            "(default 2000, at most half)")
    select_on: str = option("holdout", choices=SELECT_ON,
                            help="split that picks the subnet per budget; 'test' is the reference's flattering way")
    batch_size: int = option(128, min=1, help="images per evaluation batch (default 128)")
    seed: int = option(0, min=0, max=MAX_SEED, help="seed of the held-out split and candidate search")
    device: str = option("auto", help="cpu, cuda or auto (default)")
    progress: bool = option(True, flag=None, help="progress bars")
    # Bytes of prepared images each image set (calibration, held-out, test) may keep in memory
    # for reuse by every candidate; 0 decodes them again for every candidate.
    cache_bytes: int = option(CACHE_BYTES, flag=None, min=0, help="bytes of prepared images kept per image set")

    def __post_init__(self) -> None:
        if self.select_on not in SELECT_ON:
            raise UserError(f"--select-on must be one of {', '.join(SELECT_ON)}, got '{self.select_on}'")
        check_bounds(self)

    def selection_settings(self) -> dict[str, Any]:
        """The settings that decide which subnets are kept and what is measured (not how fast)."""
        return {"top_k": self.top_k, "calib_batches": self.calib_batches, "holdout": self.holdout,
                "select_on": self.select_on, "batch_size": self.batch_size, "seed": self.seed}


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
        """Accuracy of the recalibrated ``subnet`` on ``split`` (``holdout`` or ``test``), measured once."""
        key = (subnet, split)
        if key not in self._acc:
            self.activate(subnet)
            self._acc[key] = accuracy(self.net, self.holdout if split == "holdout" else self.test, self.device)
        return self._acc[key]


def meter_for(net: Supernet, luts: Mapping[str, Any] | None) -> ResourceMeter:
    """A resource meter with the latency tables embedded in a run or bundle."""
    # As the run trained with them (older builds wrote negative overheads, refused in new --lut files).
    tables = {kind: LatencyTable.from_dict(data, allow_negative_overhead=True) for kind, data in (luts or {}).items()}
    return ResourceMeter(net.layout, tables)


def supernet_from_run(run: RunRecord, device: torch.device) -> Supernet:
    """The trained supernet of a run, on ``device``, in eval mode."""
    net = Supernet(run.model_config)
    net.load_state_dict(run.state_dict)
    return net.to(device).eval()


def evaluate_run(run: RunRecord, data, config: EvalConfig, name: str = "run",
                 constraints: Optional[Sequence[Constraint]] = None) -> tuple[EvalResult, SubnetEvaluator]:
    """Evaluate a run (the ``final.pt`` contract) on ``data`` (a DataBundle-like object
    with ``train_eval`` and ``test`` datasets). Returns the result and the evaluator, whose
    ``stats`` hold the recalibrated BN statistics of every evaluated subnet.

    ``constraints`` (default: the run's) are the budgets; a run with pools must use its own."""
    device = resolve_device(config.device)
    net = supernet_from_run(run, device)
    constraints = list(constraints or run.constraints)
    if not constraints:
        raise UserError("the run declares no constraints; pass --constraint TYPE:START:STOP:STEP to pssnet eval")
    meter = meter_for(net, run.luts)
    evaluator, holdout_count = _evaluator(net, run, data, config, device)
    budgets = _budgets(run, net, meter, constraints, config)
    extremes = {role: Candidate(s, meter.measure_all(s))
                for role, s in (("largest", canonicalize(net.layout, net.space.largest(), net.space)),
                                ("smallest", canonicalize(net.layout, net.space.smallest(), net.space)))}
    _select(budgets, evaluator, config, name)
    _measure_kept([b.best for b in budgets] + list(extremes.values()), evaluator, config, name)

    settings = {"top_k": config.top_k, "calib_batches": config.calib_batches, "batch_size": config.batch_size,
                "holdout": holdout_count, "holdout_unseen": run.holdout is not None, "test": len(data.test),
                "seed": config.seed,
                "data": run.data, "iterations": run.iterations, "run_seed": run.seed,
                "config": config.selection_settings()}
    result = EvalResult(name, run.sampler, config.select_on, constraints, budgets, extremes, settings)
    return result, evaluator


def _evaluator(net: Supernet, run: RunRecord, data, config: EvalConfig, device: torch.device
               ) -> tuple[SubnetEvaluator, int]:
    """The evaluator on the run's calibration, held-out and test images, and the held-out count."""
    # A run that kept images out of training names them by split_train's count and seed.
    count, seed = (config.holdout, config.seed) if run.holdout is None else (run.holdout.count, run.holdout.seed)
    holdout_idx, calib_idx = split_train(len(data.train_eval), count, config.calib_batches * config.batch_size, seed)
    sets = [Batches(dataset, config.batch_size, cache_bytes=config.cache_bytes)
            for dataset in (Subset(data.train_eval, calib_idx), Subset(data.train_eval, holdout_idx), data.test)]
    return SubnetEvaluator(net, *sets, device=device), len(holdout_idx)


def _budgets(run: RunRecord, net: Supernet, meter: ResourceMeter, constraints: Sequence[Constraint],
             config: EvalConfig) -> list[BudgetResult]:
    """The candidates of every budget that has any (none selected yet)."""
    if run.pools:
        groups = pool_candidates(run, constraints, config.top_k)
    else:  # uniform run: search each budget with as many candidates as a pool contributes
        groups = search_candidates(net.space, meter, constraints, config.top_k, config.seed)
    if not groups:
        raise UserError("no budget has candidates (empty pools, or constraints the space cannot reach); "
                        "check the run's --constraint ranges against pssnet info")
    return [BudgetResult(c.kind, t, [Candidate(s, meter.measure_all(s), score) for s, score in group])
            for c, t, group in groups]


def _select(budgets: Sequence[BudgetResult], evaluator: SubnetEvaluator, config: EvalConfig, name: str) -> None:
    """Score every candidate on the selection split and keep the best per budget (first on ties)."""
    split = config.select_on
    unique = list(dict.fromkeys(c.subnet for b in budgets for c in b.candidates))
    for subnet in tqdm(unique, desc=f"eval {name}: candidates on {split}", unit="subnet",
                       disable=not config.progress, leave=False):
        evaluator.accuracy(subnet, split)
    for b in budgets:
        scores = [evaluator.accuracy(c.subnet, split) for c in b.candidates]
        for c, acc in zip(b.candidates, scores):
            if split == "holdout":
                c.holdout_acc = acc
            else:
                c.test_acc = acc
        b.selected = max(range(len(scores)), key=lambda i: (scores[i], -i))


def _measure_kept(kept: Sequence[Candidate], evaluator: SubnetEvaluator, config: EvalConfig, name: str) -> None:
    """Held-out and test accuracy of every kept subnet."""
    for subnet in tqdm(list(dict.fromkeys(c.subnet for c in kept)), desc=f"eval {name}: kept subnets",
                       unit="subnet", disable=not config.progress, leave=False):
        evaluator.accuracy(subnet, "holdout")
        evaluator.accuracy(subnet, "test")
    for c in kept:
        c.holdout_acc = evaluator.accuracy(c.subnet, "holdout")
        c.test_acc = evaluator.accuracy(c.subnet, "test")
