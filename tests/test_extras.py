"""The optional extras are optional. Without tensorboard, ``pssnet train`` trains and says in one
line that it writes no TensorBoard log. Without matplotlib, ``pssnet eval``'s report is written
but for pareto.png, saying so, and the plot alone is a one-line error naming the extra; so is an
ONNX export without onnx.

Nothing is uninstalled: a subprocess blocks the import (``sys.modules[name] = None`` makes
``import name`` and its submodules raise ImportError), as if the package were absent."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from pssnet.evaluation import EvalConfig, evaluate_run
from test_deploy_fixtures import tiny_data, tiny_run

TESTS = pathlib.Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _run_without(packages: list[str], code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in which ``packages`` cannot be imported."""
    shim = f"import sys\nfor name in {packages!r}:\n    sys.modules[name] = None\n"
    path = os.pathsep.join([str(SRC), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", shim + code], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=300)


def _notes(stderr: str, needle: str) -> list[str]:
    return [line for line in stderr.splitlines() if needle in line]


@pytest.mark.slow
def test_training_without_tensorboard_skips_its_log_with_one_note(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--arch", "mobilenet_v2", "--data", "fashion-mnist-mini", "--resolutions", "16:24:8",
            "--constraint", "flops:6:14:4", "--sampler", "uniform", "--batch-size", "8", "--max-iters", "2",
            "--holdout", "0", "--log-every", "1", "--threads", "1", "--out", str(out)]
    done = _run_without(["tensorboard"], f"from pssnet.cli import main\nsys.exit(main({args!r}))")
    assert done.returncode == 0, done.stderr
    assert _notes(done.stderr, "tensorboard") == [
        "note: tensorboard is not installed, so this run writes no TensorBoard log (tb/), only metrics.jsonl; "
        "pip install 'pssnet[tensorboard]' for one"]
    assert not (out / "tb").exists() and (out / "final.pt").is_file()
    assert done.stdout.splitlines()[-1].startswith(f"trained {out}: final.pt, metrics.jsonl (evaluate with")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "loss_largest" in r] == [1, 2]


@pytest.mark.slow
def test_report_without_matplotlib_writes_all_but_the_plot_and_says_so(tmp_path):
    """What ``pssnet eval`` (and the demo) write through :func:`pssnet.report.write_report`."""
    result, _ = evaluate_run(tiny_run(), tiny_data(), EvalConfig(top_k=2, calib_batches=1, holdout=32,
                                                                 batch_size=16, progress=False))
    (tmp_path / "eval.json").write_text(json.dumps(result.to_dict()))
    code = f"""import json
from pssnet.errors import UserError
from pssnet.evaluation import EvalResult
from pssnet.report import pareto_plot, write_report
result = EvalResult.from_dict(json.loads(open({str(tmp_path / "eval.json")!r}).read()))
print(sorted(write_report(result, {str(tmp_path / "report")!r})))
try:
    pareto_plot(result, {str(tmp_path / "plot.png")!r})
except UserError as exc:
    print(f"plot: {{exc}}")
"""
    done = _run_without(["matplotlib"], code)
    assert done.returncode == 0, done.stderr
    assert _notes(done.stderr, "matplotlib") == [
        "note: matplotlib is not installed, so no pareto.png was written; pip install 'pssnet[report]' for the plot"]
    assert done.stdout.splitlines() == ["['csv', 'md']",
                                        "plot: the Pareto plot needs matplotlib: pip install 'pssnet[report]'"]
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["pareto.csv", "pareto.md"]
    assert "| flops 5 |" in (tmp_path / "report" / "pareto.md").read_text()
    assert not (tmp_path / "plot.png").exists()


@pytest.mark.slow
def test_onnx_export_without_onnx_is_one_line_naming_the_extra(tmp_path):
    code = f"""from pssnet import extract_subnet
from pssnet.deploy.export import export_static
from pssnet.errors import UserError
from test_deploy_fixtures import tiny_supernet
net = tiny_supernet()
try:
    export_static(extract_subnet(net, net.space.smallest()), {str(tmp_path / "m.onnx")!r}, "onnx",
                  torch.randn(1, 1, 12, 12), {{}})
except UserError as exc:
    print(f"export: {{exc}}")
"""
    done = _run_without(["onnx"], "import torch\n" + code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["export: exporting ONNX needs onnx: pip install 'pssnet[export]'"]
    assert not (tmp_path / "m.onnx").exists()
