"""The deployment bundle ``adaptive.pt``: its format, writing it, and reading it back.

A bundle holds the supernet weights, the subnets evaluation retained (best per budget, plus
the largest and smallest) with their resource values and accuracies, and each one's
recalibrated BatchNorm statistics, stacked per layer as ``[subnets, channels]``. Everything is
plain data and tensors (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import torch

from .. import schema
from ..calibration import bn_layers
from ..constraints import KINDS, Constraint
from ..errors import UserError, exception_line
from ..fileio import load_plain, save_atomic
from ..layout import canonicalize
from ..run_record import RunRecord
from ..schema import FieldError
from ..space import SpaceError, Subnet
from ..resources import ResourceMeter
from ..supernet import Supernet
from .bundle_checks import (check_image_size, check_preprocessing, check_resources, checked_state_dict,
                            model_config, resource_meter)

if TYPE_CHECKING:  # a bundle is made from an evaluation's result; reading one needs none of evaluation
    from ..evaluation.results import EvalResult

BUNDLE_FORMAT = "pssnet-adaptive/1"
BnStats = Mapping[str, Mapping[str, torch.Tensor]]  # {bn_name: {"mean"/"var": [slots, channels]}}
INFO_KEYS = ("constraints", "sampler", "select_on", "data", "image_size", "luts", "preprocessing", "training")


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


def make_bundle(run: RunRecord, result: EvalResult, stats: Mapping[Subnet, Mapping[str, tuple]],
                image_size: Optional[int] = None, preprocessing: Optional[Mapping[str, Any]] = None,
                training: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """The ``adaptive.pt`` dict for a run and its evaluation ``result``.

    ``stats`` maps each retained subnet to its recalibrated ``{bn_name: (mean, var)}``;
    ``preprocessing`` is the data's :attr:`~pssnet.data.DataBundle.preprocessing` (how an image
    becomes an input, class names), which ``pssnet serve`` applies; ``training`` (optional:
    ``command``, ``data``, ``iterations``) says how the run was trained, for the model card of the
    Hub folder. Each network is stored once: retained subnets with one
    canonical form (:func:`~pssnet.layout.canonicalize`) share the first one's entry and BN slot.
    """
    layout, space = run.model_config.layout(), run.model_config.space()
    entries: dict[Subnet, dict[str, Any]] = {}
    evaluated: dict[Subnet, Subnet] = {}  # canonical -> the retained subnet whose statistics it keeps
    for label, cand in result.retained():
        canonical = canonicalize(layout, cand.subnet, space)
        evaluated.setdefault(canonical, cand.subnet)
        entry = entries.setdefault(canonical, {
            "subnet": evaluated[canonical].to_dict(), "labels": [], "resources": dict(cand.resources),
            "holdout_acc": cand.holdout_acc, "test_acc": cand.test_acc,
        })
        entry["labels"].append(label)
    order = [evaluated[s] for s in entries]
    names = list(stats[order[0]]) if order else []
    bn_stats = {name: {"mean": torch.stack([stats[s][name][0] for s in order]).float().cpu(),
                       "var": torch.stack([stats[s][name][1] for s in order]).float().cpu()}
                for name in names}
    return {
        "format": BUNDLE_FORMAT,
        "model_config": run.model_config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in run.state_dict.items()},
        "constraints": [c.to_dict() for c in result.constraints],
        "sampler": result.sampler,
        "select_on": result.select_on,
        "data": run.data,
        "image_size": image_size,
        "preprocessing": dict(preprocessing) if preprocessing else None,
        "training": dict(training) if training else None,
        "luts": dict(run.luts),
        "subnets": list(entries.values()),
        "bn_stats": bn_stats,
    }


def save_bundle(bundle: Mapping[str, Any], path: Union[str, os.PathLike]) -> None:
    save_atomic(dict(bundle), path)


def load_bundle(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The bundle dict stored at ``path`` (weights-only read; one-line errors)."""
    return load_plain(path, "deployment bundle", BUNDLE_FORMAT,
                      "write one with pssnet eval RUN_DIR (it saves RUN_DIR/adaptive.pt)")


def unpack_bundle(bundle: Mapping[str, Any], source: str = "the bundle") -> BundleContents:
    """Rebuild the supernet of a bundle dict and read its entries. Every field is checked
    (present, typed, finite, in range, BN statistics shaped like the model's layers); a bundle
    that is damaged or does not match its model raises :class:`UserError` naming ``source``
    and the field."""
    try:
        return _unpack(bundle)
    except FieldError as exc:
        message = str(exc)
    except (KeyError, TypeError, RuntimeError) as exc:  # e.g. weights that do not fit the model
        message = exception_line(exc)
    raise damaged(source, message)


def damaged(source: str, message: str) -> UserError:
    """The one-line error of a bundle (file or folder) that is damaged or does not fit its model."""
    return UserError(f"{source} is damaged or does not match its model ({message}); re-run pssnet eval to rewrite it")


def _unpack(bundle: Mapping[str, Any]) -> BundleContents:
    config = model_config(schema.require(bundle, "model_config"))
    # Every stored tensor is compared with the shapes the layout gives before the model is built.
    state = checked_state_dict(schema.require(bundle, "state_dict"), config)
    net = Supernet(config)
    net.load_state_dict(state)
    entries = schema.sequence(schema.require(bundle, "subnets"), "subnets")
    meter = resource_meter(config, bundle.get("luts"))
    subnets = [_retained(entry, slot, net, meter) for slot, entry in enumerate(entries)]
    bn_stats = _bn_stats(schema.require(bundle, "bn_stats"), net, len(subnets))
    for i, c in enumerate(schema.sequence(bundle.get("constraints") or [], "constraints")):
        try:
            Constraint.from_dict(schema.mapping(c, f"constraints[{i}]"))
        except (KeyError, TypeError, ValueError, UserError) as exc:
            raise FieldError(f"field 'constraints[{i}]' is not a constraint ({exc})") from None
    image_size = check_image_size(bundle.get("image_size"), "image_size", config, optional=True)
    for key in ("sampler", "select_on", "data"):
        schema.string(bundle.get(key), key, optional=True)
    if bundle.get("preprocessing") is not None:
        check_preprocessing(bundle["preprocessing"], config, image_size)
    if bundle.get("training") is not None:
        _check_training(bundle["training"])
    info = {k: bundle.get(k) for k in INFO_KEYS}
    info["model_config"] = config.to_dict()
    return BundleContents(net, subnets, bn_stats, info)


def _check_training(entry: Any) -> None:
    """The optional ``training`` entry: how the run was trained, for the model card."""
    schema.mapping(entry, "training")
    for key in ("command", "data"):
        schema.string(entry.get(key), f"training.{key}", optional=True)
    schema.integer(entry.get("iterations"), "training.iterations", low=0, optional=True)


def _retained(entry: Any, slot: int, net: Supernet, meter: ResourceMeter) -> RetainedSubnet:
    """Entry ``slot`` of a bundle's ``subnets``: a subnet of the model's space, its labels, its
    own resources (recounted) and accuracies (percent) or None."""
    where = f"subnets[{slot}]"
    schema.mapping(entry, where)
    try:
        subnet = net.space.validate(Subnet.from_dict(schema.require(entry, "subnet", where)))
    except SpaceError as exc:
        raise FieldError(f"field '{where}.subnet': {exc}") from None
    labels = tuple(schema.string(label, f"{where}.labels[{i}]")
                   for i, label in enumerate(schema.sequence(schema.require(entry, "labels", where),
                                                             f"{where}.labels")))
    resources = schema.mapping(schema.require(entry, "resources", where), f"{where}.resources")
    for kind in resources:
        if kind not in KINDS:
            raise FieldError(f"field '{where}.resources' has an unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    resources = {k: schema.number(v, f"{where}.resources.{k}", low=0.0) for k, v in resources.items()}
    check_resources(subnet, resources, meter, f"{where}.resources")
    holdout, test = (schema.number(entry.get(k), f"{where}.{k}", 0.0, 100.0, optional=True)
                     for k in ("holdout_acc", "test_acc"))
    return RetainedSubnet(subnet, labels, resources, holdout, test, slot)


def _bn_stats(value: Any, net: Supernet, slots: int) -> dict[str, dict[str, torch.Tensor]]:
    """The stored statistics of every BatchNorm of ``net``: finite float tensors
    ``[slots, channels]``, variances non-negative."""
    stats = schema.mapping(value, "bn_stats")
    checked = {}
    for name, bn in bn_layers(net):
        where = f"bn_stats.{name}"
        entry = schema.mapping(schema.require(stats, name, "bn_stats"), where)
        checked[name] = {}
        for part in ("mean", "var"):
            tensor = schema.require(entry, part, where)
            shape = (slots, bn.num_features)
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() \
                    or tuple(tensor.shape) != shape:
                found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                raise FieldError(f"field '{where}.{part}' must be a float tensor of shape {list(shape)} "
                                 f"(subnets, channels), got {found}")
            if not bool(torch.isfinite(tensor).all()) or (part == "var" and bool((tensor < 0).any())):
                raise FieldError(f"field '{where}.{part}' has non-finite{' or negative' if part == 'var' else ''} values")
            checked[name][part] = tensor
    return checked
