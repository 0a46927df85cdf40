"""The deployment bundle ``adaptive.pt``: its format, writing it, and reading it back.

A bundle holds the supernet weights, the subnets evaluation retained (best per budget, plus
the largest and smallest) with their resource values and accuracies, and each one's
recalibrated BatchNorm statistics, stacked per layer as ``[subnets, channels]``. Everything is
plain data and tensors (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import UserError
from ..fileio import load_plain, save_atomic
from ..space import Subnet
from ..supernet import Supernet, create_supernet

BUNDLE_FORMAT = "pssnet-adaptive/1"
BnStats = Mapping[str, Mapping[str, torch.Tensor]]  # {bn_name: {"mean"/"var": [slots, channels]}}
_INFO_KEYS = ("constraints", "sampler", "select_on", "data", "image_size", "luts")


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


@dataclass(frozen=True)
class BundleContents:
    """A bundle read back: the supernet with its weights, the retained subnets, their BN
    statistics and the plain-data rest (``model_config``, constraints, data, image size, ...)."""

    net: Supernet
    subnets: list[RetainedSubnet]
    bn_stats: BnStats
    info: dict[str, Any]


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


def load_bundle(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The bundle dict stored at ``path`` (weights-only read; one-line errors)."""
    return load_plain(path, "deployment bundle", BUNDLE_FORMAT,
                      "write one with pssnet eval RUN_DIR (it saves RUN_DIR/adaptive.pt)")


def unpack_bundle(bundle: Mapping[str, Any]) -> BundleContents:
    """Rebuild the supernet of a bundle dict and read its entries; a bundle that is incomplete
    or does not match its model raises :class:`UserError`."""
    try:
        net = create_supernet(**bundle["model_config"])
        net.load_state_dict(bundle["state_dict"])
        subnets = [RetainedSubnet(Subnet.from_dict(e["subnet"]), tuple(e["labels"]),
                                  {k: float(v) for k, v in e["resources"].items()},
                                  e.get("holdout_acc"), e.get("test_acc"), slot)
                   for slot, e in enumerate(bundle["subnets"])]
        bn_stats = bundle["bn_stats"]
    except (KeyError, TypeError, RuntimeError) as exc:
        raise UserError(f"the bundle is incomplete or does not match its model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]}); re-run pssnet eval to rewrite it") from None
    info = {k: bundle.get(k) for k in _INFO_KEYS}
    info["model_config"] = dict(bundle["model_config"])
    return BundleContents(net, subnets, bn_stats, info)
