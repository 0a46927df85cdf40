"""The CLI's error contract, device names and the shared helpers behind user errors."""

from __future__ import annotations

import pytest
import torch

from pssnet.cli import info_cmd, main
from pssnet.devices import resolve_device
from pssnet.errors import UserError
from pssnet.fileio import output_dir
from pssnet.resources import LATENCY_DEVICES, latency_kind_for
from pssnet.space import SearchSpace


def test_user_errors_exit_2_with_one_line(capsys):
    assert main(["info", "--arch", "mobilenet_v2", "--num-classes", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("pssnet info: error: ") and "--num-classes" in err


def test_any_other_exception_is_an_internal_error_with_the_debug_hint(monkeypatch, capsys):
    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(info_cmd, "run", broken)  # register() binds it when the parser is built
    assert main(["info", "--arch", "mobilenet_v2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "internal error: KeyError" in err and "PSSNET_DEBUG=1" in err
    assert not err.startswith("pssnet info: error:")  # not dressed up as the user's mistake
    monkeypatch.setenv("PSSNET_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["info", "--arch", "mobilenet_v2"])


def test_space_mistakes_are_user_errors_and_value_errors():
    with pytest.raises(UserError, match="resolution range"):
        SearchSpace(("a",), 224, 128)
    with pytest.raises(ValueError, match="resolution range"):
        SearchSpace(("a",), 224, 128)


def test_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no GPU"):
            resolve_device("cuda")
    else:
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)


def test_latency_kinds_follow_the_table_device():
    assert {kind: latency_kind_for(device) for kind, device in LATENCY_DEVICES.items()} == {
        "latency_cpu": "latency_cpu", "latency_gpu": "latency_gpu"}
    with pytest.raises(UserError):
        latency_kind_for("tpu")


def test_output_dir(tmp_path):
    assert output_dir(tmp_path / "new") == tmp_path / "new"
    assert output_dir(str(tmp_path)) == tmp_path
    with pytest.raises(UserError, match="pass --out DIR"):
        output_dir("")
    with pytest.raises(UserError, match="pass --out DIR"):
        output_dir(None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        output_dir(tmp_path / "file")


def test_a_closed_pipe_is_not_an_internal_error():
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pssnet", "info", "--arch", "mobilenet_v2", "--small-input"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # like `| head` that has already gone away
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "internal error" not in err, err
