"""The Pareto report of evaluated runs: ``pareto.csv``, ``pareto.md`` and ``pareto.png``."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Optional, Sequence, Union

from .constraints import KINDS, UNITS
from .errors import UserError
from .evaluation.results import Candidate, EvalResult
from .fileio import atomic_write, write_text_atomic

CSV_FIELDS = ["run", "sampler", "kind", "target", "role", "subnet", "resolution", "widths",
              *KINDS, "pool_score", "holdout_acc", "test_acc"]
_LABELS = {"flops": "MFLOPs", "params": "parameters (M)", "latency_cpu": "CPU latency (ms)",
           "latency_gpu": "GPU latency (ms)"}
_PLOT_EXTRA = "pip install 'pssnet[report]'"


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _row(result: EvalResult, kind: str, target: str, role: str, c: Candidate) -> dict:
    return {"run": result.name, "sampler": result.sampler, "kind": kind, "target": target, "role": role,
            "subnet": c.subnet.key, "resolution": c.subnet.resolution,
            "widths": " ".join(f"{w:.3f}" for w in c.subnet.widths),
            **{k: _fmt(c.resources.get(k), 4) for k in KINDS},
            "pool_score": _fmt(c.score, 4), "holdout_acc": _fmt(c.holdout_acc), "test_acc": _fmt(c.test_acc)}


def pareto_csv(results: Sequence[EvalResult]) -> str:
    """Every evaluated candidate of every run, the kept ones marked ``role=selected``."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in results:
        for b in r.budgets:
            for i, c in enumerate(b.candidates):
                writer.writerow(_row(r, b.kind, f"{b.target:g}", "selected" if i == b.selected else "candidate", c))
        for role, c in sorted(r.extremes.items()):
            writer.writerow(_row(r, "", "", role, c))
    return out.getvalue()


def _resource_cells(c: Candidate, kinds: Sequence[str]) -> list[str]:
    return [f"{c.resources[k]:.4g}" if k in c.resources else "" for k in kinds]


def pareto_markdown(result: EvalResult, others: Sequence[EvalResult] = ()) -> str:
    """The kept subnet per budget with resources and accuracies (plus comparison columns)."""
    kinds = [k for k in KINDS if all(k in c.resources for c in result.extremes.values())]
    s = result.settings
    lines = [
        f"# Pareto table: {result.name} ({result.sampler})",
        "",
        f"Kept subnet per budget, chosen by {'held-out' if result.select_on == 'holdout' else 'TEST (flattering)'}"
        f" accuracy among the top-{s.get('top_k', '?')} candidates (held-out: {s.get('holdout', '?')} training "
        f"images, {'kept out of' if s.get('holdout_unseen') else 'seen in'} training; test: {s.get('test', '?')} "
        f"images; BN recalibrated on {s.get('calib_batches', '?')} batches of {s.get('batch_size', '?')}).",
        "",
    ]
    head = ["budget", "subnet", *[UNITS[k] for k in kinds], "held-out acc", "test acc", "candidates"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in result.budgets:
        c = b.best
        lines.append("| " + " | ".join([f"{b.kind} {b.target:g}", f"`{c.subnet.key}`", *_resource_cells(c, kinds),
                                          _fmt(c.holdout_acc), _fmt(c.test_acc), str(len(b.candidates))]) + " |")
    for role, c in sorted(result.extremes.items(), reverse=True):
        lines.append("| " + " | ".join([role, f"`{c.subnet.key}`", *_resource_cells(c, kinds),
                                          _fmt(c.holdout_acc), _fmt(c.test_acc), ""]) + " |")
    if others:
        lines += ["", "## Comparison (test accuracy of the kept subnet per budget)", ""]
        head = ["budget", f"{result.name} ({result.sampler})", *[f"{o.name} ({o.sampler})" for o in others]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for b in result.budgets:
            cells = [_fmt(_best_test(o, b.kind, b.target)) for o in others]
            lines.append("| " + " | ".join([f"{b.kind} {b.target:g}", _fmt(b.best.test_acc), *cells]) + " |")
    return "\n".join(lines) + "\n"


def _best_test(result: EvalResult, kind: str, target: float) -> Optional[float]:
    for b in result.budgets:
        if b.kind == kind and abs(b.target - target) < 1e-9 and b.best is not None:
            return b.best.test_acc
    return None


def _pyplot() -> Optional[ModuleType]:
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_plot(result: EvalResult, path: Union[str, os.PathLike], others: Sequence[EvalResult] = ()) -> None:
    """Test accuracy vs. each trained resource type: kept subnets highlighted, candidates
    (held-out accuracy) faint, the largest/smallest subnets starred, other runs overlaid. Needs
    matplotlib (the ``report`` extra)."""
    plt = _pyplot()
    if plt is None:
        raise UserError(f"the Pareto plot needs matplotlib: {_PLOT_EXTRA}")
    kinds = list(dict.fromkeys(c.kind for c in result.constraints))
    fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, kind in zip(axes[0], kinds):
        for n, r in enumerate([result, *others]):
            color = colors[n % len(colors)]
            kept = sorted((b.best.resources[kind], b.best.test_acc) for b in r.budgets
                          if b.kind == kind and b.best is not None and b.best.test_acc is not None)
            if n == 0:
                cand = [(c.resources[kind], c.holdout_acc) for b in r.budgets if b.kind == kind
                        for i, c in enumerate(b.candidates) if i != b.selected and c.holdout_acc is not None]
                if cand:
                    ax.scatter(*zip(*cand), s=10, color=color, alpha=0.25, label="candidates (held-out acc)")
            if kept:
                ax.plot(*zip(*kept), marker="o", lw=2 if n == 0 else 1.4, color=color,
                        label=f"{r.name} ({r.sampler}): kept per budget")
            ext = [(c.resources[kind], c.test_acc) for c in r.extremes.values()
                   if kind in c.resources and c.test_acc is not None]
            if ext:
                ax.scatter(*zip(*ext), marker="*", s=120, color=color, edgecolor="black", zorder=3,
                           label=f"{r.name}: smallest / largest")
        ax.set_xlabel(_LABELS.get(kind, kind))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Accuracy vs. resources of the subnets kept per budget")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def write_report(result: EvalResult, out_dir: Union[str, os.PathLike], others: Sequence[EvalResult] = ()
                 ) -> dict[str, Path]:
    """Write pareto.csv, pareto.md and pareto.png into ``out_dir``; return their paths.

    Without matplotlib (an optional extra) the plot is left out with a one-line note on stderr."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / f"pareto.{name}" for name in ("csv", "md")}
    for name, text in (("csv", pareto_csv([result, *others])), ("md", pareto_markdown(result, others))):
        write_text_atomic(paths[name], text)
    if _pyplot() is None:
        print(f"note: matplotlib is not installed, so no pareto.png was written; {_PLOT_EXTRA} for the plot",
              file=sys.stderr, flush=True)
    else:
        paths["png"] = out_dir / "pareto.png"
        pareto_plot(result, paths["png"], others)
    return paths
