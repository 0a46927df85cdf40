"""AdaptiveNet: a deployed supernet that switches between its retained subnets by budget.

The retained subnets' recalibrated BatchNorm statistics live as (non-persistent) buffers in
every :class:`~pssnet.ops.SlimBatchNorm2d`, so ``.to(device)`` and ``.half()`` move them like
any weight. Switching sets the supernet's shared :class:`~pssnet.ops.ActiveState` (subnet,
channels, resolution, BN slot): no module traversal, no recalibration, a few microseconds.
"""

from __future__ import annotations

import bisect
import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..calibration import bn_layers
from ..constraints import KINDS, UNITS
from ..errors import UserError
from ..ops import SlimBatchNorm2d
from ..space import Subnet
from ..supernet import StaticSubnet, Supernet, extract_subnet
from .bundle import BUNDLE_FORMAT, INFO_KEYS, BnStats, RetainedSubnet, load_bundle, unpack_bundle
from .hub import PLOT_NAME, download_snapshot, hub_api, is_folder, load_folder, save_folder


def install_stat_banks(net: Supernet, bn_stats: BnStats) -> None:
    """Give every BatchNorm of ``net`` its stored statistics ``[slots, channels]``."""
    for name, bn in bn_layers(net):
        if not isinstance(bn, SlimBatchNorm2d) or name not in bn_stats:
            raise UserError(f"the bundle has no statistics for BatchNorm '{name}'; re-run pssnet eval")
        bn.set_stat_bank(bn_stats[name]["mean"].to(bn.running_mean), bn_stats[name]["var"].to(bn.running_var))


class AdaptiveNet(nn.Module):
    """A supernet that runs one retained subnet at a time, switched by budget.

    ``fit_budget(flops=..., latency_cpu=...)`` picks the retained subnet with the best
    held-out accuracy that satisfies every given budget and activates it with its stored BN
    statistics. Inference only: the supernet always stays in eval mode.
    """

    def __init__(self, net: Supernet, subnets: Sequence[RetainedSubnet], bn_stats: BnStats,
                 info: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        if not subnets:
            raise UserError("the bundle retains no subnets; re-run pssnet eval on the training run")
        install_stat_banks(net, bn_stats)
        self.net = net.eval()
        self._state = net.state  # the shared state every layer reads: switching writes only this
        self.info = dict(info or {})
        self.pareto_plot: Optional[Path] = None  # the Pareto plot next to the bundle it was loaded from
        self._subnets = tuple(subnets)
        self.kinds = tuple(k for k in KINDS if all(k in r.resources for r in self._subnets))
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
    def from_bundle(cls, bundle: Mapping[str, Any], device: torch.device | str = "cpu",
                    source: str = "the bundle") -> "AdaptiveNet":
        """An AdaptiveNet of a bundle dict (see :func:`pssnet.deploy.make_bundle`); ``source``
        names it in error messages."""
        contents = unpack_bundle(bundle, source)
        return cls(contents.net, contents.subnets, contents.bn_stats, contents.info).to(device)

    @classmethod
    def load(cls, path: Union[str, os.PathLike], device: torch.device | str = "cpu") -> "AdaptiveNet":
        """Load a bundle written by ``pssnet eval``: ``adaptive.pt`` or the Hub folder ``adaptive/``."""
        if is_folder(path):
            net = cls.from_bundle(load_folder(path), device, source=f"adaptive folder '{path}'")
            net.pareto_plot = Path(path) / PLOT_NAME
        else:
            net = cls.from_bundle(load_bundle(path), device, source=f"deployment bundle '{path}'")
            net.pareto_plot = Path(path).with_name(PLOT_NAME)
        return net

    # -- Hugging Face Hub conventions (huggingface_hub.ModelHubMixin) --------

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, os.PathLike], *, force_download: bool = False,
                        token: Union[str, bool, None] = None, cache_dir: Union[str, os.PathLike, None] = None,
                        local_files_only: bool = False, revision: Optional[str] = None,
                        device: torch.device | str = "cpu") -> "AdaptiveNet":
        """Load a Hub folder (or ``adaptive.pt``) from a local path, else a Hub repository id
        (``"user/repo"``), downloaded with ``huggingface_hub.snapshot_download`` (the ``hub`` extra)."""
        name = str(pretrained_model_name_or_path)
        if os.path.exists(name):
            return cls.load(name, device)
        if name.count("/") > 1 or name.startswith((".", "/", "~")) or name.endswith(".pt"):  # no repo id
            raise UserError(f"{name} does not exist; give a folder or adaptive.pt written by pssnet eval, "
                            "or a Hub repository id (user/name)")
        folder = download_snapshot(name, revision=revision, cache_dir=cache_dir,
                                   force_download=force_download, token=token, local_files_only=local_files_only)
        return cls.load(folder, device)

    def save_pretrained(self, save_directory: Union[str, os.PathLike], *, repo_id: Optional[str] = None,
                        push_to_hub: bool = False, **push_to_hub_kwargs: Any) -> Optional[str]:
        """Write this bundle as a Hub folder (``config.json``, ``model.safetensors``, ``README.md``,
        and ``pareto.png`` when the bundle was loaded next to one); with ``push_to_hub=True`` also
        upload it (to ``repo_id``, default: the directory's name) and return the commit URL."""
        save_folder(self.to_bundle(), save_directory, plot=self.pareto_plot, flag="save_directory")
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, **push_to_hub_kwargs)
        return None

    def push_to_hub(self, repo_id: str, *, commit_message: str = "Upload pssnet adaptive supernet",
                    private: Optional[bool] = None, token: Optional[str] = None, branch: Optional[str] = None,
                    create_pr: Optional[bool] = None, allow_patterns: Union[list[str], str, None] = None,
                    ignore_patterns: Union[list[str], str, None] = None,
                    delete_patterns: Union[list[str], str, None] = None) -> str:
        """Create (or reuse) the Hub repository ``repo_id`` and upload this bundle's folder to it in
        one commit, as ``ModelHubMixin.push_to_hub`` does; returns the commit URL."""
        api = hub_api(token)
        repo_id = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "adaptive"
            self.save_pretrained(folder)
            return api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=folder,
                                     commit_message=commit_message, revision=branch, create_pr=create_pr,
                                     allow_patterns=allow_patterns, ignore_patterns=ignore_patterns,
                                     delete_patterns=delete_patterns)

    def to_bundle(self) -> dict[str, Any]:
        """The bundle dict of this net (as ``adaptive.pt`` stores it), on the CPU in float32:
        ``save_bundle(net.to_bundle(), path)`` writes it back."""
        entries = [{"subnet": r.subnet.to_dict(), "labels": list(r.labels), "resources": dict(r.resources),
                    "holdout_acc": r.holdout_acc, "test_acc": r.test_acc} for r in self._subnets]
        stats = {name: {"mean": bn.bank_mean.detach().cpu().float(), "var": bn.bank_var.detach().cpu().float()}
                 for name, bn in bn_layers(self.net)}
        state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
                 for k, v in self.net.state_dict().items()}
        info = {key: self.info.get(key) for key in INFO_KEYS}
        return {"format": BUNDLE_FORMAT, **info, "model_config": self.net.config.to_dict(), "state_dict": state,
                "subnets": entries, "bn_stats": stats}

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
        """The active retained subnet (the one whose BN slot the shared state holds)."""
        return self._subnets[self._state.bn_slot]

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

    def budget_ranges(self, kind: str) -> list[tuple[float, Optional[float], RetainedSubnet]]:
        """``(low, high, subnet)``: a single budget ``kind=v`` with ``low <= v < high`` (``high``
        None: no upper end) selects ``subnet``; ranges ascending, below the first none fits."""
        if kind not in self._kind_index:
            raise UserError(f"this bundle has no {kind} values; budget kinds: {', '.join(self.kinds)}")
        values, best = self._tables[self._kind_index[kind]]
        ranges: list[tuple[float, Optional[float], RetainedSubnet]] = []
        for pos, (low, retained) in enumerate(zip(values, best)):
            high = values[pos + 1] if pos + 1 < len(values) else None
            if high == low:
                continue  # equal values: bisection picks the last of them
            if ranges and ranges[-1][2] is retained:
                low = ranges.pop()[0]
            ranges.append((low, high, retained))
        return ranges

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
        self.switch_to(retained)
        return retained

    def switch_to(self, retained: RetainedSubnet) -> None:
        """Activate a retained subnet with its stored BN statistics (O(1), no validation)."""
        state = self._state
        state.subnet = retained.subnet
        state.channels = self._channels[retained.slot]
        state.resolution = retained.subnet.resolution
        state.bn_slot = retained.slot

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
        previous = self.current
        try:
            self.switch_to(retained)  # eval mode: the extracted BN layers read this slot's bank
            static = extract_subnet(self.net, retained.subnet)
        finally:
            self.switch_to(previous)
        return static.eval()
