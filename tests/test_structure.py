"""The package's import graph has no cycle, counting imports inside functions too, and the
package ``__init__`` modules that an import runs first."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules(src: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``src/pssnet`` (packages by their __init__)."""
    out = {}
    for path in sorted((src / "pssnet").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pssnet modules that ``name`` imports anywhere in its file, with the packages that
    those imports run first (see :func:`_enclosing_packages`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):  # type-checking-only imports never run, so they form no cycle
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
    found = {m for m in found if m in modules}
    found |= {p for m in found for p in _enclosing_packages(m, package) if p in modules}
    return found - {name}


def _enclosing_packages(module: str, running: str) -> list[str]:
    """The packages whose ``__init__`` an import of ``module`` runs first (``from .evaluation.results
    import X`` runs ``evaluation/__init__.py``), less those that enclose the importer: its own
    package ``running`` and the packages above it are already being initialised."""
    parts = module.split(".")
    enclosing = [".".join(parts[:i]) for i in range(1, len(parts))]
    busy = running.split(".")
    return [p for p in enclosing if busy[: len(p.split("."))] != p.split(".")]


def import_cycles(src: Path = SRC) -> list[list[str]]:
    """Every strongly connected group of more than one module in the import graph (Tarjan)."""
    modules = _modules(src)
    graph = {name: sorted(_imported(name, path, modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return cycles


def test_the_checker_finds_a_cycle(tmp_path):
    pkg = tmp_path / "pssnet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import thing\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    assert import_cycles(tmp_path) == [["pssnet.a", "pssnet.sub.b"]]


def test_the_checker_counts_the_package_init_that_an_import_runs(tmp_path):
    # report.py names only evaluation.results, but importing it runs evaluation/__init__.py first,
    # whose lazy hook imports the pipeline, which imports report.py: a loop through the __init__.
    pkg = tmp_path / "pssnet"
    (pkg / "evaluation").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import report\n")
    (pkg / "report.py").write_text("from .evaluation.results import Result\n")
    (pkg / "evaluation" / "__init__.py").write_text(
        "from .results import Result\n\n\ndef __getattr__(name):\n    from . import pipeline\n\n"
        "    return getattr(pipeline, name)\n")
    (pkg / "evaluation" / "results.py").write_text("class Result:\n    pass\n")
    (pkg / "evaluation" / "pipeline.py").write_text("from ..report import Result\n")
    assert import_cycles(tmp_path) == [["pssnet.evaluation", "pssnet.evaluation.pipeline", "pssnet.report"]]


def test_imports_inside_one_package_do_not_rerun_its_init(tmp_path):
    pkg = tmp_path / "pssnet"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "sub" / "b.py").write_text("from .c import thing\nfrom ..a import other\n")
    (pkg / "sub" / "c.py").write_text("thing = 1\n")
    (pkg / "a.py").write_text("other = 2\n")
    assert import_cycles(tmp_path) == []


def test_no_import_cycle_among_pssnet_modules():
    assert import_cycles() == []


@pytest.mark.parametrize("module", ["pssnet.report", "pssnet.evaluation.results", "pssnet.workflows.evaluate"])
def test_each_layer_imports_first_in_a_fresh_interpreter(module):
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
