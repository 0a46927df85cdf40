"""Subnet samplers behind one interface: Prioritized Subnet Sampling and the uniform baseline.

PSS pools hold canonical subnets (:func:`~pssnet.layout.canonicalize`), one entry per network.
The uniform sampler draws raw multipliers: a raw subnet trains exactly the network of its
canonical form, so canonicalising there would change nothing but the names.

A sampler owns its random generator, seeded identically on every process, so that all ranks
of a distributed run draw the same subnets without communicating; its state (generator and
pools) is plain data for checkpoints.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..constraints import Constraint, target_key
from ..layout import canonical_subnet
from ..resources import ResourceMeter
from ..space import SearchSpace, Subnet
from .pool import SubnetPool
from .space_map import SpaceMap

SAMPLERS = ("pss", "uniform")


def exp_schedule(start: float, end: float, progress: float) -> float:
    """``start * (end / start) ** progress``: ``start`` at progress 0, ``end`` at 1."""
    progress = min(max(float(progress), 0.0), 1.0)
    return start * (end / start) ** progress


@dataclass(frozen=True)
class Draw:
    """A sampled subnet and where it came from (``kind``/``target`` are None for uniform)."""

    subnet: Subnet
    kind: str | None = None
    target: float | None = None
    source: str = "space"  # "space", "pool" or "uniform"


def _new_rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([seed, 0x5A3E]))


class SubnetSampler(ABC):
    """Chooses the middle subnet of each sandwich step and learns from its score."""

    name: str

    def __init__(self, seed: int) -> None:
        self.rng = _new_rng(seed)

    @abstractmethod
    def sample(self, progress: float) -> Draw:
        """The subnet to train this step; ``progress`` is the fraction of training done."""

    def update(self, draw: Draw, score: float) -> None:
        """Report the score (``-CE``) of a drawn subnet. The uniform sampler ignores it."""

    def pools_state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """``{kind: {target_key: [{"subnet", "score"}, ...best first]}}`` ({} without pools)."""
        return {}

    def pool_fill(self) -> float:
        """Fraction of pool capacity in use (0 without pools)."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rng": json.dumps(self.rng.bit_generator.state), "pools": self.pools_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(f"sampler state is for '{state.get('name')}', not '{self.name}'")
        self.rng.bit_generator.state = json.loads(state["rng"])


class UniformSampler(SubnetSampler):
    """US-Net baseline: resolution and every multiplier at random by the reference's law
    (:meth:`~pssnet.space.SearchSpace.sample_arrays`; raw, not canonical: the trained network is
    the same)."""

    name = "uniform"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        super().__init__(seed)
        self.space = space

    def sample(self, progress: float) -> Draw:
        res, widths = self.space.sample_arrays(1, self.rng)
        return Draw(Subnet(int(res[0]), tuple(widths[0].tolist())), source="uniform")


class PSSSampler(SubnetSampler):
    """Prioritized Subnet Sampling: one pool per (constraint kind, reachable target).

    Each step picks a kind with probability proportional to its number of pools, then a target
    uniformly. With probability ``p(e) = p0 * (p1/p0)^(e/E)`` (always while the pool is not
    full) the subnet comes from the space map, otherwise from the pool with probability
    ``softmax(score / T(e))``, ``T(e) = T0 * (T1/T0)^(e/E)``.
    """

    name = "pss"

    def __init__(self, constraints: Sequence[Constraint], maps: Mapping[str, SpaceMap], meter: ResourceMeter,
                 seed: int = 0, pool_size: int = 50, ema: float = 0.9, p0: float = 1.0, p1: float = 0.01,
                 t0: float = 1.0, t1: float = 0.01) -> None:
        super().__init__(seed)
        if not constraints:
            raise ValueError("the pss sampler needs at least one constraint")
        if min(p0, p1, t0, t1) <= 0:
            raise ValueError("schedule end points p0, p1, T0, T1 must be > 0")
        self.constraints = list(constraints)
        self.maps, self.meter = dict(maps), meter
        self.p0, self.p1, self.t0, self.t1 = p0, p1, t0, t1
        # Reachable target indices per kind, and their pools.
        self.target_indices = {c.kind: np.flatnonzero(self.maps[c.kind].observations > 0) for c in self.constraints}
        self.pools: dict[str, dict[float, SubnetPool]] = {
            c.kind: {c.targets[i]: SubnetPool(pool_size, ema) for i in self.target_indices[c.kind]}
            for c in self.constraints
        }
        self._kinds = [c.kind for c in self.constraints if len(self.target_indices[c.kind])]
        if not self._kinds:
            raise ValueError("no constraint has a reachable target")
        counts = np.asarray([len(self.target_indices[k]) for k in self._kinds], dtype=np.float64)
        self._kind_cdf = np.cumsum(counts) / counts.sum()

    def space_probability(self, progress: float) -> float:
        return exp_schedule(self.p0, self.p1, progress)

    def temperature(self, progress: float) -> float:
        return exp_schedule(self.t0, self.t1, progress)

    def sample(self, progress: float) -> Draw:
        kind = self._kinds[min(int(np.searchsorted(self._kind_cdf, self.rng.random(), side="right")),
                               len(self._kinds) - 1)]
        indices = self.target_indices[kind]
        index = int(indices[self.rng.integers(len(indices))])
        constraint = self.maps[kind].constraint
        target = constraint.targets[index]
        pool = self.pools[kind][target]
        from_space = self.rng.random() < self.space_probability(progress) or not pool.full
        if from_space:
            return Draw(self.maps[kind].draw(index, self.meter, self.rng), kind, target, "space")
        return Draw(pool.draw(self.rng, self.temperature(progress)), kind, target, "pool")

    def update(self, draw: Draw, score: float) -> None:
        """Score ``draw``'s network under its canonical form, so a pool never splits one network."""
        self.pools[draw.kind][draw.target].update(self.canonical(draw.kind, draw.subnet), score)

    def canonical(self, kind: str, subnet: Subnet) -> Subnet:
        """``subnet``'s canonical form (the map's draws and the pools' entries already are)."""
        return canonical_subnet(self.meter.layout, self.maps[kind].width_values, subnet.resolution, subnet.widths)

    def pools_state(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        return {kind: {target_key(t): pool.state_dict() for t, pool in pools.items()}
                for kind, pools in self.pools.items()}

    def pool_fill(self) -> float:
        pools = [p for by_target in self.pools.values() for p in by_target.values()]
        return sum(len(p) for p in pools) / max(1, sum(p.size for p in pools))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for kind, by_target in state["pools"].items():
            if kind not in self.pools:
                raise ValueError(f"sampler state has pools for '{kind}', which this run does not train")
            pools = {target_key(t): p for t, p in self.pools[kind].items()}
            for key, entries in by_target.items():
                if key not in pools:
                    raise ValueError(f"sampler state has a pool for {kind} target {key}, not in this run")
                pools[key].load_state_dict(self._canonical_entries(kind, entries))

    def _canonical_entries(self, kind: str, entries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Entries (best first) under canonical subnets; of copies of one network the best stays."""
        out: dict[Subnet, dict[str, Any]] = {}
        for entry in entries:
            subnet = self.canonical(kind, Subnet.from_dict(entry["subnet"]))
            out.setdefault(subnet, {"subnet": subnet.to_dict(), "score": entry["score"]})
        return list(out.values())


def make_sampler(name: str, space: SearchSpace, constraints: Sequence[Constraint] = (),
                 maps: Mapping[str, SpaceMap] | None = None, meter: ResourceMeter | None = None,
                 seed: int = 0, **pss_options: Any) -> SubnetSampler:
    """Create a sampler by name (``pss`` or ``uniform``)."""
    if name == "uniform":
        return UniformSampler(space, seed)
    if name == "pss":
        if maps is None or meter is None:
            raise ValueError("the pss sampler needs space maps and a resource meter")
        return PSSSampler(constraints, maps, meter, seed, **pss_options)
    raise ValueError(f"unknown sampler '{name}'; use one of {', '.join(SAMPLERS)}")
