"""Issue 11, sections 2 and 3 at the command line: file-system faults, bad numbers and damaged
files end in one line on stderr and exit status 2; older files are kept, nothing is left behind."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

from pssnet.cli import info_cmd, main
from pssnet.deploy import save_bundle
from pssnet.errors import UserError
from pssnet.fileio import save_atomic, write_text_atomic
from test_reliability_api import valid_bundle


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"pssnet {command}: error: "), err
    return err


@pytest.fixture(scope="module")
def bundle_file(tmp_path_factory):
    bundle = valid_bundle()
    path = tmp_path_factory.mktemp("bundle") / "adaptive.pt"
    save_bundle(bundle, path)
    return path, bundle["subnets"][0]


def _key(entry) -> str:
    from pssnet.space import Subnet

    return Subnet.from_dict(entry["subnet"]).key


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (needs root); skipped only where mounting is impossible. The injected
    faults below run everywhere."""
    mounted = []

    def mount(size: str = "16k", read_only: bool = False):
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    for target in mounted:  # lazily: a failed torch.save may hold its file open until collected
        subprocess.run(["umount", "-l", str(target)], check=False)


# ---------------------------------------------------------------- numeric flags


@pytest.mark.parametrize("argv, flag", [
    (["adapt", "b.pt", "--threads", "-1"], "--threads"),
    (["serve", "b.pt", "--slo-ms", "-1"], "--slo-ms"),
    (["serve", "b.pt", "--slo-ms", "10", "--quantile", "1.5"], "--quantile"),
    (["serve", "b.pt", "--slo-ms", "10", "--port", "70000"], "--port"),
    (["serve", "b.pt", "--slo-ms", "10", "--max-batch", "0"], "--max-batch"),
    (["serve", "b.pt", "--slo-ms", "10", "--max-wait-ms", "nan"], "--max-wait-ms"),
    (["serve", "b.pt", "--slo-ms", "10", "--threads", "0"], "--threads"),
    (["adapt", "b.pt", "--batch", "0"], "--batch"),
    (["eval", "run", "--top-k", "0"], "--top-k"),
    (["eval", "run", "--calib-batches", "-1"], "--calib-batches"),
    (["eval", "run", "--holdout", "-5"], "--holdout"),
    (["eval", "run", "--batch-size", "0"], "--batch-size"),
    (["eval", "run", "--seed", "-1"], "--seed"),
    (["eval", "run", "--seed", str(2**64)], "--seed"),
    (["lut", "build", "--arch", "mobilenet_v2", "-o", "t.json", "--threads", "-1"], "--threads"),
    (["lut", "build", "--arch", "mobilenet_v2", "-o", "t.json", "--batch", "0"], "--batch"),
    (["lut", "build", "--arch", "mobilenet_v2", "-o", "t.json", "--rounds", "0"], "--rounds"),
    (["lut", "build", "--arch", "mobilenet_v2", "-o", "t.json", "--repeats", "0"], "--repeats"),
    (["lut", "build", "--arch", "mobilenet_v2", "-o", "t.json", "--warmup", "-1"], "--warmup"),
    (["lut", "build", "--arch", "mobilenet_v2", "-o", "t.json", "--num-classes", "x"], "--num-classes"),
    (["info", "--arch", "mobilenet_v2", "--in-chans", "0"], "--in-chans"),
    (["demo", "--epochs", "nan"], "--epochs"),
    (["demo", "--threads", "0"], "--threads"),
])
def test_every_numeric_flag_is_checked_with_a_line_naming_it(argv, flag, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    # a bound (checked where the setting is declared) or a number that does not parse (argparse)
    named = f"error: {flag} must " in err or f"error: argument {flag}: invalid" in err
    assert err.count("\n") == 0 and named and f"pssnet {argv[0]}" in err, err


def test_bad_lut_space_flags_are_one_line(capsys, tmp_path):
    out = str(tmp_path / "t.json")
    assert main(["lut", "build", "--arch", "mobilenet_v2", "-o", out, "--width-range", "nan:1", "--dry-run"]) == 2
    assert "--width-range must be a finite number" in one_line_error(capsys, "lut")
    assert main(["lut", "build", "--arch", "mobilenet_v2", "-o", out, "--width-range", "0:1", "--dry-run"]) == 2
    assert "width_range[0]" in one_line_error(capsys, "lut")  # the space's own bound


def test_adapt_threads_minus_one_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "pssnet", "adapt", "b.pt", "--threads", "-1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "pssnet adapt: error: --threads must be at least 1, got -1" in result.stderr


def test_a_tiny_constraint_step_is_refused_at_once_in_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pssnet", "eval", str(tmp_path), "--constraint", "flops:1:1e9:1e-9"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert "targets (at most 10,000)" in result.stderr


# ---------------------------------------------------------------- damaged files


def test_a_bundle_without_bn_stats_is_one_line(tmp_path, capsys):
    bundle = valid_bundle()
    del bundle["bn_stats"]
    save_bundle(bundle, tmp_path / "adaptive.pt")
    assert main(["adapt", str(tmp_path / "adaptive.pt"), "--list"]) == 2
    err = one_line_error(capsys, "adapt")
    assert "'bn_stats' is missing" in err and str(tmp_path / "adaptive.pt") in err


def test_a_table_with_an_entries_list_is_one_line(tmp_path, capsys):
    import json

    from test_reliability_api import valid_table

    (tmp_path / "lut.json").write_text(json.dumps({**valid_table(), "entries": [["a", 1.0]]}))
    assert main(["lut", "show", str(tmp_path / "lut.json")]) == 2
    assert "'entries' must be a mapping" in one_line_error(capsys, "lut")


def test_eval_of_a_run_with_a_truncated_checkpoint_says_damaged(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-000000004.pt").write_bytes(b"PK\x03\x04")
    assert main(["eval", str(tmp_path)]) == 2
    assert "is damaged" in one_line_error(capsys, "eval")


# ---------------------------------------------------------------- output paths


def test_export_to_a_directory_or_under_a_file_is_one_line(bundle_file, tmp_path, capsys):
    path, entry = bundle_file
    assert main(["export", str(path), "--subnet", _key(entry), "-o", str(tmp_path)]) == 2
    assert "is a directory; give a file name" in one_line_error(capsys, "export")
    (tmp_path / "file").write_text("x")
    assert main(["export", str(path), "--subnet", _key(entry), "-o", str(tmp_path / "file" / "m.pt")]) == 2
    assert "is under the file" in one_line_error(capsys, "export")
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("argv", [["eval", "RUN", "--out", "FILE"], ["demo", "--out", "FILE/sub"],
                                  ["lut", "build", "--arch", "mobilenet_v2", "-o", "FILE/t.json"],
                                  ["lut", "build", "--arch", "mobilenet_v2", "-o", "DIR"]])
def test_out_is_a_file_or_under_a_file(argv, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "run").mkdir()
    names = {"FILE": str(tmp_path / "file"), "RUN": str(tmp_path / "run"), "DIR": str(tmp_path / "dir")}
    argv = [next((a.replace(k, v) for k, v in names.items() if a.startswith(k)), a) for a in argv]
    assert main(argv) == 2
    err = one_line_error(capsys, argv[0])
    assert "is a file" in err or "under the file" in err or "is a directory" in err


def test_export_into_a_read_only_file_system(bundle_file, tmpfs, capsys):
    path, entry = bundle_file
    read_only = tmpfs(read_only=True)
    assert main(["export", str(path), "--subnet", _key(entry), "-o", str(read_only / "m.pt")]) == 2
    assert "cannot write in" in one_line_error(capsys, "export")
    with pytest.raises(UserError, match="read-only file system; choose another location"):
        write_text_atomic(read_only / "t.json", "{}")


def test_export_onto_a_full_disk_keeps_nothing_half_written(bundle_file, tmpfs, capsys):
    path, entry = bundle_file
    small = tmpfs("16k")
    assert main(["export", str(path), "--subnet", _key(entry), "--format", "pt", "-o", str(small / "m.pt")]) == 2
    err = one_line_error(capsys, "export")
    assert f"no space left on {small} while writing {small / 'm.pt'}" in err
    assert os.listdir(small) == []


def test_a_full_disk_keeps_the_older_file_for_real(tmpfs):
    small = tmpfs("64k")
    save_atomic({"w": torch.arange(4)}, small / "ckpt.pt")
    with pytest.raises(UserError, match=f"no space left on {small} while writing"):
        save_atomic({"w": torch.zeros(100_000)}, small / "ckpt.pt")
    assert os.listdir(small) == ["ckpt.pt"]
    assert torch.equal(torch.load(small / "ckpt.pt", weights_only=True)["w"], torch.arange(4))


# ---------------------------------------------------------------- injected faults (run everywhere)


def _half_written_then(make_error):
    """A torch.save that writes part of the file, then fails with ``make_error(tmp_path)``."""
    def fake_save(obj, tmp, *args, **kwargs):
        with open(tmp, "wb") as f:
            f.write(b"PK\x03\x04 half")
        raise make_error(tmp)

    return fake_save


@pytest.mark.parametrize("fault", [
    lambda tmp: OSError(errno.ENOSPC, "No space left on device", tmp),
    lambda tmp: RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
    lambda tmp: RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"),
], ids=["ENOSPC", "torch-unexpected-pos", "torch-write-failed"])
def test_injected_disk_full_is_a_user_error_and_keeps_the_old_file(fault, monkeypatch, tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic({"w": torch.arange(3)}, path)
    monkeypatch.setattr(torch, "save", _half_written_then(fault))
    with pytest.raises(UserError, match=r"no space left on /\S* while writing .*ckpt.pt; free some space"):
        save_atomic({"w": torch.zeros(5)}, path)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_other_failures_while_writing_stay_bugs(monkeypatch, tmp_path):
    monkeypatch.setattr(torch, "save", _half_written_then(lambda tmp: RuntimeError("a bug in a writer")))
    with pytest.raises(RuntimeError, match="a bug in a writer"):
        save_atomic({}, tmp_path / "x.pt")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("exc, status, text", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/final.pt"), 2, "no space left on"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/x"), 2, "cannot access /data/x: permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 2, "read-only file system"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data"), 2, "/data is a directory"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), 2, "a part of the path is a file"),
    (OSError(errno.EIO, "Input/output error"), 1, "internal error: OSError"),
    (OSError(errno.EBADF, "Bad file descriptor", "/x"), 1, "internal error: OSError"),
])
def test_os_errors_at_the_cli_boundary(exc, status, text, monkeypatch, capsys):
    def broken(args):
        raise exc

    monkeypatch.setattr(info_cmd, "run", broken)
    assert main(["info", "--arch", "mobilenet_v2"]) == status
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and text in err
