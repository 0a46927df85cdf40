"""The run record: what a finished training run hands to evaluation and deployment.

``pssnet train`` writes it as ``final.pt`` (format ``pssnet-run/1``, plain data and tensors for
torch's weights-only loader); :func:`pssnet.training.load_run` reads it back, or builds it
from the newest checkpoint of an interrupted run. It sits below training, evaluation and
deployment, so that the readers need not import the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch

from . import schema
from .constraints import Constraint
from .errors import UserError
from .schema import FieldError
from .space import SpaceError, Subnet
from .supernet_config import SupernetConfig

RUN_FORMAT = "pssnet-run/1"

# One pool's (subnet, score) entries, best first, as SubnetPool.entries() gives them.
PoolEntries = tuple[tuple[Subnet, float], ...]


@dataclass(frozen=True)
class Holdout:
    """The training images kept out for selection: ``split_train``'s count and seed."""

    count: int
    seed: int


# eq=False: the weights are tensors, which have no truth value, so records compare by identity.
@dataclass(frozen=True, eq=False)
class RunRecord:
    """A trained supernet with its budgets, pools and the facts evaluation needs."""

    model_config: SupernetConfig
    state_dict: dict[str, torch.Tensor]
    constraints: tuple[Constraint, ...]
    pools: dict[str, dict[str, PoolEntries]]  # kind -> target_key(target) -> entries; {} without PSS
    sampler: str
    data: Optional[str]  # the --data spec trained on
    image_size: Optional[int]  # the --image-size of an image-folder run, else None
    luts: dict[str, dict[str, Any]]  # kind -> LatencyTable.to_dict() of each latency constraint
    seed: int
    iterations: int
    holdout: Optional[Holdout]  # None: no images were kept out of training

    def to_dict(self) -> dict[str, Any]:
        """The on-disk form (``final.pt``); :meth:`from_dict` inverts it."""
        return {
            "format": RUN_FORMAT,
            "model_config": self.model_config.to_dict(),
            "state_dict": self.state_dict,  # as read: torch's OrderedDict keeps its _metadata (versions)
            "constraints": [c.to_dict() for c in self.constraints],
            "pools": {kind: {key: [{"subnet": s.to_dict(), "score": score} for s, score in entries]
                             for key, entries in by_target.items()}
                      for kind, by_target in self.pools.items()},
            "sampler": self.sampler,
            "data": self.data,
            "image_size": self.image_size,
            "luts": {kind: dict(table) for kind, table in self.luts.items()},
            "seed": self.seed,
            "iterations": self.iterations,
            "holdout": None if self.holdout is None else {"count": self.holdout.count, "seed": self.holdout.seed},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "the run") -> "RunRecord":
        """Read the on-disk form. A missing or ill-typed field raises :class:`UserError` naming
        ``source`` (the file) and the field."""
        try:
            return cls._checked(data)
        except FieldError as exc:
            raise UserError(f"{source} is not a complete pssnet run ({exc}); "
                            "resume from an older checkpoint or train again") from None

    @classmethod
    def _checked(cls, data: Mapping[str, Any]) -> "RunRecord":
        if schema.require(data, "format") != RUN_FORMAT:
            raise FieldError(f"field 'format' must be {RUN_FORMAT!r}, got {data['format']!r}")
        return cls(
            model_config=_model_config(schema.require(data, "model_config")),
            state_dict=_state_dict(schema.require(data, "state_dict")),
            constraints=_constraints(schema.require(data, "constraints")),
            pools=_pools(schema.require(data, "pools")),
            sampler=schema.string(schema.require(data, "sampler"), "sampler"),
            data=schema.string(schema.require(data, "data"), "data", optional=True),
            # image_size and holdout came later under the same format: older runs lack them.
            image_size=schema.integer(data.get("image_size"), "image_size", 1, optional=True),
            luts=_luts(schema.require(data, "luts")),
            seed=schema.integer(schema.require(data, "seed"), "seed"),
            iterations=schema.integer(schema.require(data, "iterations"), "iterations", 0),
            holdout=_holdout(data.get("holdout")),
        )


def _model_config(value: Any) -> SupernetConfig:
    try:
        return SupernetConfig.from_dict(schema.mapping(value, "model_config"))
    except FieldError as exc:
        raise FieldError(f"model_config: {exc}") from None


def _state_dict(value: Any) -> dict[str, torch.Tensor]:
    weights = schema.mapping(value, "state_dict")
    for name, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor):
            raise FieldError(f"field 'state_dict.{name}' must be a tensor, got {type(tensor).__name__}")
    return weights if isinstance(weights, dict) else dict(weights)  # kept as is: see to_dict


def _constraints(value: Any) -> tuple[Constraint, ...]:
    out = []
    for i, c in enumerate(schema.sequence(value, "constraints")):
        try:
            out.append(Constraint.from_dict(schema.mapping(c, f"constraints[{i}]")))
        except (KeyError, TypeError, ValueError, UserError) as exc:
            raise FieldError(f"field 'constraints[{i}]' is not a constraint ({exc})") from None
    return tuple(out)


def _pools(value: Any) -> dict[str, dict[str, PoolEntries]]:
    pools: dict[str, dict[str, PoolEntries]] = {}
    for kind, by_target in schema.mapping(value, "pools").items():
        pools[kind] = {}
        for key, entries in schema.mapping(by_target, f"pools.{kind}").items():
            where = f"pools.{kind}.{key}"
            pools[kind][key] = tuple(_pool_entry(e, f"{where}[{i}]")
                                     for i, e in enumerate(schema.sequence(entries, where)))
    return pools


def _pool_entry(entry: Any, where: str) -> tuple[Subnet, float]:
    schema.mapping(entry, where)
    try:
        subnet = Subnet.from_dict(schema.require(entry, "subnet", where))
    except SpaceError as exc:
        raise FieldError(f"field '{where}.subnet': {exc}") from None
    return subnet, schema.number(schema.require(entry, "score", where), f"{where}.score")


def _luts(value: Any) -> dict[str, dict[str, Any]]:
    tables = schema.mapping(value, "luts")
    return {kind: dict(schema.mapping(table, f"luts.{kind}")) for kind, table in tables.items()}


def _holdout(value: Any) -> Optional[Holdout]:
    if value is None:
        return None
    schema.mapping(value, "holdout")
    return Holdout(schema.integer(schema.require(value, "count", "holdout"), "holdout.count", 0),
                   schema.integer(schema.require(value, "seed", "holdout"), "holdout.seed"))
