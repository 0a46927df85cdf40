"""Candidate subnets per budget: a pool's top-k (PSS runs), or a search inside the budget (uniform runs).

Candidates are canonical subnets (:func:`~pssnet.layout.canonicalize`), each network once, so
copies of one network never take several top-k slots.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..constraints import Constraint, target_key
from ..layout import canonical_widths, canonicalize
from ..resources import ResourceMeter
from ..run_record import RunRecord
from ..space import SearchSpace, Subnet, subnets_from_arrays


def pool_candidates(run: RunRecord, constraints: Sequence[Constraint], top_k: int
                    ) -> list[tuple[Constraint, float, list[tuple[Subnet, float]]]]:
    """(constraint, target, [(subnet, score), ...best first][:top_k]) of every non-empty pool.

    Subnets are canonical and distinct; of copies of one network (pools of runs made before
    canonical subnets) the best-scored one stands for it.
    """
    layout, space = run.model_config.layout(), run.model_config.space()
    out = []
    for c in constraints:
        by_target = run.pools.get(c.kind, {})
        for t in c.targets:
            best: dict[Subnet, float] = {}
            for subnet, score in by_target.get(target_key(t), ()):
                best.setdefault(canonicalize(layout, subnet, space), score)
            if best:
                out.append((c, t, list(best.items())[:top_k]))
    return out


def search_candidates(space: SearchSpace, meter: ResourceMeter, constraints: Sequence[Constraint],
                      per_budget: int, seed: int, draws: int = 20000, rounds: int = 5
                      ) -> list[tuple[Constraint, float, list[tuple[Subnet, None]]]]:
    """``per_budget`` distinct random canonical subnets inside each budget's bucket (runs without pools).

    Half the draws are uniform; half spread all multipliers around one random level, so that
    the extreme buckets, which uniform draws almost never reach, get candidates too.
    """
    rng = np.random.default_rng(seed)
    out = []
    for c in constraints:
        found: dict[float, dict[Subnet, None]] = {t: {} for t in c.targets}
        for _ in range(rounds):
            res, widths = _spread_draws(space, draws, rng)
            widths = canonical_widths(meter.layout, space.width_grid(), widths)
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
    """Half uniform subnets, half spread over the whole size range (:meth:`SearchSpace.sample_spread_arrays`)."""
    res_u, widths_u = space.sample_arrays(n - n // 2, rng)
    res_s, widths_s = space.sample_spread_arrays(n // 2, rng)
    return np.concatenate([res_u, res_s]), np.concatenate([widths_u, widths_s])
