"""The evaluation result schema: candidates per budget, the subnet kept, and ``eval.json``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..constraints import Constraint
from ..errors import UserError
from ..space import Subnet

FORMAT = "pssnet-eval/1"


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
    """Everything ``pssnet eval`` measured for one run (saved as ``eval.json``).

    ``settings`` describes how it was measured; its ``"config"`` entry holds the settings that
    decide whether a saved result can be reused (see :meth:`EvalConfig.selection_settings`)."""

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
        return {"format": FORMAT, "name": self.name, "sampler": self.sampler,
                "select_on": self.select_on, "constraints": [c.to_dict() for c in self.constraints],
                "budgets": [b.to_dict() for b in self.budgets],
                "extremes": {k: c.to_dict() for k, c in self.extremes.items()}, "settings": self.settings}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "EvalResult":
        if data.get("format") != FORMAT:
            raise UserError("not a pssnet evaluation file; run pssnet eval RUN_DIR to write one")
        return cls(data["name"], data["sampler"], data["select_on"],
                   [Constraint.from_dict(c) for c in data["constraints"]],
                   [BudgetResult.from_dict(b) for b in data["budgets"]],
                   {k: Candidate.from_dict(c) for k, c in data["extremes"].items()}, data.get("settings", {}))


def load_eval(path: Union[str, os.PathLike]) -> EvalResult:
    """Read an ``eval.json`` written by :func:`~pssnet.workflows.evaluate_run_dir`."""
    path = Path(path)
    try:
        return EvalResult.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"cannot read evaluation '{path}' ({type(exc).__name__}); re-run pssnet eval") from None
