"""Issue 18, item 2 (static subnets in current formats: torch.export, the dynamo-based ONNX
exporter with a dynamic batch, every kept subnet at once) and issue 20, item 6 (TorchScript onto
a full disk was a C++ abort that left a temporary file)."""

import errno
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from pssnet.cli import main
from pssnet.deploy import AdaptiveNet, example_input, export_static, load_static, run_export
from test_reliability_api import valid_bundle
from test_reliability_cli import one_line_error, tmpfs  # noqa: F401  (tmpfs is a fixture)

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from pssnet.deploy import save_bundle

    path = tmp_path_factory.mktemp("export") / "adaptive.pt"
    save_bundle(valid_bundle(), path)
    return path


def _check_at_two_batch_sizes(adaptive: AdaptiveNet, path, fmt: str) -> None:
    retained = adaptive.subnets[0]
    static = adaptive.export(retained)
    for batch in (1, 5):  # the example had 2: the batch dimension is dynamic
        x = torch.randn(batch, 1, 20, 20)
        with torch.no_grad():
            want = static(x)
        torch.testing.assert_close(run_export(path, fmt, x), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


@pytest.mark.slow
def test_torch_export_program_matches_eager_pytorch_at_any_batch_size(bundle, tmp_path, capsys):
    adaptive = AdaptiveNet.load(bundle)
    key = adaptive.subnets[0].key
    assert main(["export", str(bundle), "--subnet", key, "-o", str(tmp_path / "m.pt2")]) == 0
    assert "(exported)" in capsys.readouterr().out
    assert isinstance(torch.export.load(str(tmp_path / "m.pt2")), torch.export.ExportedProgram)
    _check_at_two_batch_sizes(adaptive, tmp_path / "m.pt2", "exported")


@pytest.mark.slow
def test_onnx_uses_the_dynamo_exporter_with_a_dynamic_batch(bundle, tmp_path, capsys):
    import onnx

    adaptive = AdaptiveNet.load(bundle)
    assert main(["export", str(bundle), "--subnet", adaptive.subnets[0].key, "-o", str(tmp_path / "m.onnx")]) == 0
    assert "note:" not in capsys.readouterr().err
    model = onnx.load(str(tmp_path / "m.onnx"))
    # torch.onnx's dynamo exporter writes opset 18 or later; the TorchScript-based one was given 17
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a named, symbolic batch size
    _check_at_two_batch_sizes(adaptive, tmp_path / "m.onnx", "onnx")


@pytest.mark.slow
def test_onnx_falls_back_to_the_torchscript_exporter_and_says_so(bundle, tmp_path, monkeypatch, capsys):
    adaptive = AdaptiveNet.load(bundle)
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("dynamo cannot trace this\nsecond line")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    static = adaptive.export(adaptive.subnets[0])
    export_static(static, tmp_path / "m.onnx", "onnx", example_input(adaptive.info["model_config"], 20, 2), {})
    err = capsys.readouterr().err.strip()
    assert err == ("note: the dynamo-based ONNX exporter failed (RuntimeError: dynamo cannot trace this); "
                   "used the TorchScript-based one")
    _check_at_two_batch_sizes(adaptive, tmp_path / "m.onnx", "onnx")


def test_all_writes_every_kept_subnet_with_an_index_of_the_budgets_each_serves(bundle, tmp_path, capsys):
    out = tmp_path / "subnets"
    assert main(["export", str(bundle), "--all", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    adaptive = AdaptiveNet.load(bundle)
    assert index["format"] == "pssnet-export-index/1" and index["export_format"] == "pt"
    assert sorted(e["key"] for e in index["subnets"]) == sorted(r.key for r in adaptive.subnets)
    assert sorted(p.name for p in out.iterdir()) == sorted([e["file"] for e in index["subnets"]] + ["index.json"])
    x = torch.randn(3, 1, 20, 20)
    served = 0
    for entry in index["subnets"]:
        retained = adaptive.find(entry["key"])
        assert entry["resources"] == dict(retained.resources) and entry["max_abs_diff_vs_pytorch"] <= 1e-5
        with torch.no_grad():
            torch.testing.assert_close(load_static(out / entry["file"])(x), adaptive.export(retained)(x))
        for kind, spans in entry["serves"].items():
            for low, high in spans:  # both ends of each range ask fit_budget for this very subnet
                assert adaptive.select(**{kind: low}).key == entry["key"]
                top = low * 10 if high is None else (low + high) / 2
                assert adaptive.select(**{kind: top}).key == entry["key"]
                served += 1
        assert entry["file"] in printed
    assert served >= 1 and f"wrote {len(index['subnets'])} pt files" in printed


def test_all_and_hub_refuse_a_budget_and_a_single_export_needs_one(bundle, tmp_path, capsys):
    for argv, text in ((["--all", "--budget", "flops=5"], "--all exports every retained subnet; drop --budget"),
                       (["--format", "hub", "--subnet", "x"], "--format hub exports every retained subnet"),
                       ([], "give either --budget TYPE=N (repeatable) or --subnet KEY (or --all")):
        assert main(["export", str(bundle), *argv, "-o", str(tmp_path / "x")]) == 2
        assert text in one_line_error(capsys, "export")


def test_torchscript_onto_a_full_disk_is_one_line_and_leaves_no_temporary_file(bundle, tmp_path, monkeypatch,
                                                                              capsys):
    key = AdaptiveNet.load(bundle).subnets[0].key
    real_write = pathlib.Path.write_bytes

    def full_disk(self, data):
        real_write(self, data[:100])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    out = tmp_path / "out"
    out.mkdir()
    assert main(["export", str(bundle), "--subnet", key, "--format", "torchscript", "-o", str(out / "m.ts")]) == 2
    err = one_line_error(capsys, "export")
    assert f"while writing {out / 'm.ts'}; free some space or choose another output location" in err
    assert os.listdir(out) == []


@pytest.mark.slow
def test_torchscript_onto_a_real_full_disk_exits_2_not_134(bundle, tmpfs):  # noqa: F811
    small = tmpfs("64k")
    key = AdaptiveNet.load(bundle).subnets[0].key
    done = subprocess.run([sys.executable, "-m", "pssnet", "export", str(bundle), "--subnet", key, "--format",
                           "torchscript", "-o", str(small / "m.ts")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0 and f"no space left on {small} while writing" in done.stderr
    assert os.listdir(small) == []
