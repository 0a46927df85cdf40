"""Deployment: the adaptive bundle, budget-driven switching, and static export.

``adaptive.pt`` holds the supernet weights, the subnets evaluation retained (best per budget,
plus the largest and smallest) with their resource values and accuracies, and each one's
recalibrated BatchNorm statistics. :class:`AdaptiveNet` loads it, installs the statistics as
banks in every :class:`~pssnet.ops.SlimBatchNorm2d` and switches subnets by setting the
supernet's shared state (channels, resolution, BN slot): no module traversal, no
recalibration, a few microseconds. Everything is plain data and tensors
(``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .calibration import bn_layers
from .constraints import KINDS, UNITS
from .errors import UserError
from .fileio import atomic_write, load_plain, save_atomic
from .ops import SlimBatchNorm2d
from .space import Subnet
from .supernet import StaticSubnet, Supernet, create_supernet, extract_subnet

BUNDLE_FORMAT = "pssnet-adaptive/1"
STATIC_FORMAT = "pssnet-static/1"
EXPORT_FORMATS = ("pt", "torchscript", "onnx")


# ----------------------------------------------------------------------------- bundle


def make_bundle(run: Mapping[str, Any], result, stats: Mapping[Subnet, Mapping[str, tuple]],
                image_size: Optional[int] = None) -> dict[str, Any]:
    """The ``adaptive.pt`` dict for an evaluated run.

    ``result`` is an :class:`~pssnet.evaluation.EvalResult`; ``stats`` maps each retained
    subnet to its recalibrated ``{bn_name: (mean, var)}``.
    """
    entries: dict[Subnet, dict[str, Any]] = {}
    for label, cand in result.retained():
        entry = entries.setdefault(cand.subnet, {
            "subnet": cand.subnet.to_dict(), "labels": [], "resources": dict(cand.resources),
            "holdout_acc": cand.holdout_acc, "test_acc": cand.test_acc,
        })
        entry["labels"].append(label)
    order = list(entries)
    names = list(stats[order[0]]) if order else []
    bn_stats = {name: {"mean": torch.stack([stats[s][name][0] for s in order]).float().cpu(),
                       "var": torch.stack([stats[s][name][1] for s in order]).float().cpu()}
                for name in names}
    return {
        "format": BUNDLE_FORMAT,
        "model_config": dict(run["model_config"]),
        "state_dict": {k: v.detach().cpu() for k, v in run["state_dict"].items()},
        "constraints": [c.to_dict() for c in result.constraints],
        "sampler": result.sampler,
        "select_on": result.select_on,
        "data": run.get("data"),
        "image_size": image_size,
        "luts": dict(run.get("luts") or {}),
        "subnets": [entries[s] for s in order],
        "bn_stats": bn_stats,
    }


def save_bundle(bundle: Mapping[str, Any], path: Union[str, os.PathLike]) -> None:
    save_atomic(dict(bundle), path)


_set_plain = object.__setattr__


@dataclass(frozen=True)
class RetainedSubnet:
    """A subnet kept in a bundle: identity, budgets it won, resources, accuracies, BN slot."""

    subnet: Subnet
    labels: tuple[str, ...]
    resources: Mapping[str, float]
    holdout_acc: Optional[float]
    test_acc: Optional[float]
    slot: int

    @property
    def key(self) -> str:
        return self.subnet.key

    def describe(self) -> str:
        res = ", ".join(f"{k}={v:.4g}" for k, v in self.resources.items())
        acc = "n/a" if self.test_acc is None else f"{self.test_acc:.2f}%"
        return f"{self.key} ({res}; test acc {acc}; kept for {', '.join(self.labels)})"


class AdaptiveNet(nn.Module):
    """A supernet that runs one retained subnet at a time, switched by budget.

    ``fit_budget(flops=..., latency_cpu=...)`` picks the retained subnet with the best
    held-out accuracy that satisfies every given budget and activates it with its stored BN
    statistics. Inference only: the supernet always stays in eval mode.
    """

    def __init__(self, net: Supernet, subnets: Sequence[RetainedSubnet],
                 bn_stats: Mapping[str, Mapping[str, torch.Tensor]], info: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not subnets:
            raise UserError("the bundle retains no subnets; re-run pssnet eval on the training run")
        self.net = net.eval()
        _set_plain(self, "_supernet", net)  # unregistered aliases for the switching fast path
        _set_plain(self, "_state", net.state)
        self.info = dict(info or {})
        self._subnets = tuple(subnets)
        self.kinds = tuple(k for k in KINDS if all(k in r.resources for r in self._subnets))
        self.banks = nn.Module()  # buffers, so that .to(device) moves the statistics
        self._bank_names: list[tuple[SlimBatchNorm2d, str]] = []
        for i, (name, bn) in enumerate(bn_layers(net)):
            if not isinstance(bn, SlimBatchNorm2d) or name not in bn_stats:
                raise UserError(f"the bundle has no statistics for BatchNorm '{name}'; re-run pssnet eval")
            self.banks.register_buffer(f"mean{i}", bn_stats[name]["mean"].to(bn.running_mean))
            self.banks.register_buffer(f"var{i}", bn_stats[name]["var"].to(bn.running_var))
            self._bank_names.append((bn, str(i)))
        self._install_banks()
        # Switching reads only these precomputed tuples (most accurate first).
        self._channels = [net.layout.group_channels(r.subnet.widths) for r in self._subnets]
        ranked = sorted(self._subnets, key=lambda r: (-(r.holdout_acc or 0.0), r.resources.get("flops", 0.0)))
        self._ranked = [(r, tuple(r.resources[k] for k in self.kinds)) for r in ranked]
        self._kind_index = {k: i for i, k in enumerate(self.kinds)}
        # Per kind: resource values ascending, and the best subnet among those up to each value,
        # so that a single budget is answered by one bisection.
        self._tables = [self._best_upto(i) for i in range(len(self.kinds))]
        self.switch_to(ranked[0])

    # -- construction -------------------------------------------------------

    @classmethod
    def from_bundle(cls, bundle: Mapping[str, Any], device: torch.device | str = "cpu") -> "AdaptiveNet":
        try:
            net = create_supernet(**bundle["model_config"])
            net.load_state_dict(bundle["state_dict"])
            subnets = [RetainedSubnet(Subnet.from_dict(e["subnet"]), tuple(e["labels"]),
                                      {k: float(v) for k, v in e["resources"].items()},
                                      e.get("holdout_acc"), e.get("test_acc"), slot)
                       for slot, e in enumerate(bundle["subnets"])]
        except (KeyError, TypeError, RuntimeError) as exc:
            raise UserError(f"the bundle is incomplete or does not match its model ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:120]}); re-run pssnet eval to rewrite it") from None
        info = {k: bundle.get(k) for k in ("constraints", "sampler", "select_on", "data", "image_size", "luts")}
        info["model_config"] = dict(bundle["model_config"])
        return cls(net.to(device), subnets, bundle["bn_stats"], info).to(device)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: torch.device | str = "cpu") -> "AdaptiveNet":
        """Load ``adaptive.pt`` (written by ``pssnet eval``)."""
        bundle = load_plain(path, "deployment bundle", BUNDLE_FORMAT,
                            "write one with pssnet eval RUN_DIR (it saves RUN_DIR/adaptive.pt)")
        return cls.from_bundle(bundle, device)

    def _install_banks(self) -> None:
        for bn, i in self._bank_names:
            bn.set_stat_bank(getattr(self.banks, f"mean{i}"), getattr(self.banks, f"var{i}"))

    def _apply(self, fn, *args, **kwargs):  # keep the BN banks pointing at moved/cast buffers
        super()._apply(fn, *args, **kwargs)
        if hasattr(self, "_bank_names"):
            self._install_banks()
        return self

    def train(self, mode: bool = True) -> "AdaptiveNet":
        """Inference only: stays in eval mode (train the :class:`Supernet` instead)."""
        return super().train(False)

    def _best_upto(self, kind_index: int) -> tuple[list[float], list[RetainedSubnet]]:
        rank = {id(r): n for n, (r, _) in enumerate(self._ranked)}
        values, best = [], []
        for r, v in sorted(self._ranked, key=lambda rv: rv[1][kind_index]):
            if best and rank[id(best[-1])] < rank[id(r)]:
                r = best[-1]
            values.append(v[kind_index])
            best.append(r)
        return values, best

    # -- selection and switching --------------------------------------------

    @property
    def subnets(self) -> tuple[RetainedSubnet, ...]:
        return self._subnets

    @property
    def current(self) -> RetainedSubnet:
        return self._current

    def _check_budgets(self, budgets: Mapping[str, float]) -> list[tuple[int, float]]:
        if not budgets:
            raise UserError(f"give at least one budget, e.g. fit_budget(flops=...); kinds: {', '.join(self.kinds)}")
        checked = []
        for kind, value in budgets.items():
            if kind not in self._kind_index:
                if kind in KINDS:
                    raise UserError(f"this bundle has no {kind} values (no latency table for it); budget by "
                                    f"{', '.join(self.kinds)}, or evaluate a run trained with a {kind} table")
                raise UserError(f"unknown budget type '{kind}'; use one of {', '.join(self.kinds)}")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise UserError(f"budget {kind}={value!r} is not a finite number; give e.g. {kind}=50")
            checked.append((self._kind_index[kind], float(value)))
        return checked

    def select(self, **budgets: float) -> RetainedSubnet:
        """The most accurate (held-out) retained subnet within every budget, without switching."""
        checked = self._check_budgets(budgets)
        if len(checked) == 1:
            kind_index, limit = checked[0]
            values, best = self._tables[kind_index]
            pos = bisect.bisect_right(values, limit)
            if pos:
                return best[pos - 1]
            raise UserError(self._explain_infeasible(budgets))
        for retained, values in self._ranked:
            for i, limit in checked:
                if values[i] > limit:
                    break
            else:
                return retained
        raise UserError(self._explain_infeasible(budgets))

    def _explain_infeasible(self, budgets: Mapping[str, float]) -> str:
        for kind, value in budgets.items():
            low = min(r.resources[kind] for r in self._subnets)
            if value < low:
                return (f"budget {kind}={value:g} is below the smallest retained subnet ({low:.4g} "
                        f"{UNITS[kind]}); raise it to at least {low:.4g}")
        given = ", ".join(f"{k}={v:g}" for k, v in budgets.items())
        return f"no retained subnet meets all of {given} at once; relax one of them"

    def fit_budget(self, **budgets: float) -> RetainedSubnet:
        """Switch to the best retained subnet within the budgets (e.g. ``flops=50``); return it."""
        retained = self.select(**budgets)
        if retained is not self._current:
            self.switch_to(retained)
        return retained

    def switch_to(self, retained: RetainedSubnet) -> None:
        """Activate a retained subnet with its stored BN statistics (O(1), no validation)."""
        state = self._state
        state.channels = self._channels[retained.slot]
        state.resolution = retained.subnet.resolution
        state.bn_slot = retained.slot
        # Plain attributes, set past nn.Module.__setattr__ (which alone costs microseconds).
        _set_plain(self._supernet, "active_subnet", retained.subnet)
        _set_plain(self, "_current", retained)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # -- export -------------------------------------------------------------

    def find(self, subnet: Union[Subnet, RetainedSubnet, str]) -> RetainedSubnet:
        """The retained entry of a subnet (given as Subnet, entry or key)."""
        key = subnet if isinstance(subnet, str) else subnet.key
        for r in self._subnets:
            if r.key == key:
                return r
        raise UserError(f"subnet {key} is not retained in this bundle; pick one of AdaptiveNet.subnets "
                        "(others need pssnet.recalibrate_bn before pssnet.extract_subnet)")

    def export(self, subnet: Union[Subnet, RetainedSubnet, str, None] = None, **budgets: float) -> StaticSubnet:
        """A standalone :class:`StaticSubnet` (sliced weights, stored BN statistics) of a retained
        subnet, given directly or chosen by budgets as in :meth:`fit_budget`."""
        retained = self.find(subnet) if subnet is not None else self.select(**budgets)
        previous = self._current
        self.net.state.bn_slot = retained.slot  # eval mode: BN layers read the bank slot
        try:
            static = extract_subnet(self.net, retained.subnet)
        finally:
            self.switch_to(previous)
        return static.eval()


# ----------------------------------------------------------------------------- static export


def example_input(model_config: Mapping[str, Any], image_size: Optional[int], batch: int = 1) -> torch.Tensor:
    """A random input as the deployed model receives it (data image size, else max resolution)."""
    size = image_size or model_config["resolutions"][1]
    return torch.randn(batch, model_config["in_chans"], size, size)


def export_static(static: StaticSubnet, path: Union[str, os.PathLike], fmt: str,
                  example: torch.Tensor, meta: Mapping[str, Any]) -> None:
    """Write ``static`` as ``pt`` (weights_only dict, see :func:`load_static`), ``torchscript``
    or ``onnx`` (opset 17, dynamic batch; expects inputs shaped like ``example``)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    static = static.eval()
    if fmt == "pt":
        data = {"format": STATIC_FORMAT, **dict(meta), "state_dict": static.state_dict()}
        save_atomic(data, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still widely deployed
            scripted = torch.jit.script(static)
        atomic_write(path, lambda tmp: scripted.save(tmp))
    else:
        def write_onnx(tmp: str) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(static, (example,), tmp, dynamo=False, opset_version=17,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        atomic_write(path, write_onnx)


def load_static(path: Union[str, os.PathLike]) -> StaticSubnet:
    """Load a ``pt`` export: rebuilds the subnet's structure and loads its sliced weights."""
    data = load_plain(path, "static subnet", STATIC_FORMAT, "export one with pssnet export BUNDLE --format pt")
    net = create_supernet(**data["model_config"])
    static = extract_subnet(net, Subnet.from_dict(data["subnet"]))
    static.load_state_dict(data["state_dict"])
    return static.eval()


def run_export(path: Union[str, os.PathLike], fmt: str, example: torch.Tensor) -> torch.Tensor:
    """Outputs of an exported file on ``example``, run by the format's own runtime."""
    if fmt == "pt":
        with torch.no_grad():
            return load_static(path)(example)
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")(example)
    try:
        import onnxruntime
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: pip install 'pssnet[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": example.numpy()})[0])


def parse_budgets(texts: Sequence[str]) -> dict[str, float]:
    """``["flops=20", "latency_cpu=3.5"]`` -> ``{"flops": 20.0, "latency_cpu": 3.5}``."""
    budgets: dict[str, float] = {}
    for text in texts:
        kind, sep, value = text.partition("=")
        kind = kind.strip()
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not kind or not math.isfinite(number):
            raise UserError(f"bad budget '{text}'; write TYPE=NUMBER, e.g. flops=20 or latency_cpu=3.5")
        if kind not in KINDS:
            raise UserError(f"unknown budget type '{kind}' in '{text}'; use one of {', '.join(KINDS)}")
        if kind in budgets:
            raise UserError(f"budget type '{kind}' given twice; give one value per type")
        budgets[kind] = number
    return budgets


# ----------------------------------------------------------------------------- budget traces


@dataclass(frozen=True)
class TraceEvent:
    time: float
    budgets: Mapping[str, float]


def parse_trace(text: str, source: str = "trace") -> list[TraceEvent]:
    """Lines ``TIMESTAMP TYPE=N [TYPE=N ...]`` (seconds, non-decreasing); ``#`` starts a comment."""
    events: list[TraceEvent] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        try:
            time = float(fields[0])
        except ValueError:
            time = math.nan
        if not math.isfinite(time) or time < 0:
            raise UserError(f"{where}: '{fields[0]}' is not a time stamp; write e.g. '0.5 flops=20'")
        if len(fields) < 2:
            raise UserError(f"{where}: no budget after the time stamp; write e.g. '{fields[0]} flops=20'")
        if events and time < events[-1].time:
            raise UserError(f"{where}: time {time:g} is before the previous line's {events[-1].time:g}; "
                            "sort the trace by time")
        try:
            budgets = parse_budgets(fields[1:])
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        events.append(TraceEvent(time, budgets))
    if not events:
        raise UserError(f"{source} has no budget lines; write one per line, e.g. '0.0 flops=20'")
    return events
