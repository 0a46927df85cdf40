"""The run directory's life cycle: crashes before the first checkpoint, torn logs, changed flags on
--resume, two writers, Ctrl-C, a diverged loss and another number of processes."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pssnet.cli import main
from pssnet.errors import UserError
from pssnet.training import load_run
from pssnet.training import step as step_module
from pssnet.training.interrupt import StopSignals
from pssnet.training.run_dir import RunLock
from pssnet.training.run_log import read_metrics
from pssnet.training.data_order import rank_seed

TINY = ["--preset", "mini-mbv2", "--batch-size", "8", "--threads", "1", "--map-samples", "2000", "--no-progress",
        "--holdout", "0", "--log-every", "1"]


def _train(out, *extra):
    return main(["train", *TINY, "--out", str(out), "--map-cache", str(out.parent / "maps"), *extra])


def _resume(out, *extra):
    return main(["train", "--out", str(out), "--resume", "--threads", "1", "--no-progress", *extra])


def _killed_before_first_checkpoint(out):
    """A run directory as a kill during the first checkpoint's write leaves it."""
    assert _train(out, "--max-iters", "2") == 0
    for path in (out / "checkpoints").iterdir():
        path.unlink()
    (out / "final.pt").unlink()
    stray = out / "checkpoints" / ".ckpt-000000002.pt.4242.0123abcd.tmp"
    stray.write_bytes(b"half a checkpoint")
    return stray


def test_resume_without_a_complete_checkpoint_starts_from_scratch(tmp_path, capsys):
    out = tmp_path / "run"
    stray = _killed_before_first_checkpoint(out)
    capsys.readouterr()
    assert _resume(out) == 0
    err = capsys.readouterr().err
    assert "no complete checkpoint; starting the run from the beginning" in err and str(stray) in err
    assert not stray.exists()
    assert load_run(out).iterations == 2


def test_restart_without_a_complete_checkpoint_is_allowed(tmp_path, capsys):
    out = tmp_path / "run"
    stray = _killed_before_first_checkpoint(out)
    capsys.readouterr()
    assert _train(out, "--max-iters", "2") == 0
    assert "no complete checkpoint; starting it again" in capsys.readouterr().err
    assert not stray.exists() and (out / "final.pt").is_file()
    assert _train(out, "--max-iters", "2") == 2  # now it holds a finished run


def test_unreadable_newest_checkpoint_is_set_aside(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "3", "--checkpoint-iters", "1", "--keep-checkpoints", "1") == 0
    (out / "final.pt").unlink()
    (out / "checkpoints" / "ckpt-000000009.pt").write_bytes(b"truncated")
    assert _resume(out, "--max-iters", "5") == 0
    assert "ckpt-000000009.pt: unreadable (truncated or not a pssnet checkpoint); renamed to " \
           "ckpt-000000009.pt.damaged" in capsys.readouterr().err
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["ckpt-000000005.pt", "ckpt-000000009.pt.damaged"]  # keep=1 kept the new one


def test_torn_metrics_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "3", "--checkpoint-iters", "1") == 0
    (out / "final.pt").unlink()
    for path in (out / "checkpoints").glob("ckpt-000000003.pt"):
        path.unlink()  # resume from iteration 2
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 4, "lo')  # a write cut short
    capsys.readouterr()
    assert _resume(out) == 0
    assert "dropped the torn last line" in capsys.readouterr().err
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["iteration"] for r in rows if "loss_largest" in r] == [1, 2, 3]

    lines = (out / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (out / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is damaged"):
        read_metrics(out / "metrics.jsonl")


def test_resume_refuses_changes_that_alter_training_and_reports_harmless_ones(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "2") == 0
    capsys.readouterr()
    assert _resume(out, "--arch", "mobilenet_v1", "--constraint", "params:1:2:0.1", "--seed", "0",
                   "--max-iters", "3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--arch mobilenet_v2 -> mobilenet_v1" in err and "--constraint flops:11:24:1 -> params:1:2:0.1" in err
    assert "--seed" not in err  # the same value as the run's: no change
    assert _resume(out, "--max-iters", "3", "--keep-checkpoints", "2", "--log-every", "1") == 0
    err = capsys.readouterr().err
    assert "--max-iters 2 -> 3" in err and "--keep-checkpoints 3 -> 2" in err and "recomputed" in err
    assert load_run(out).iterations == 3


def test_second_writer_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    lock = RunLock(out).acquire()
    try:
        assert _train(out, "--max-iters", "2") == 2
    finally:
        lock.release()
    err = capsys.readouterr().err
    assert f"PID {os.getpid()}" in err and "another pssnet train" in err
    assert not (out / "final.pt").exists()
    assert _train(out, "--max-iters", "2") == 0  # released


def test_diverged_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    original, calls = step_module.SandwichStep.__call__, []

    def diverging(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(1)
        return dataclasses.replace(result, loss_largest=float("nan")) if len(calls) == 3 else result

    monkeypatch.setattr(step_module.SandwichStep, "__call__", diverging)
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "5", "--checkpoint-iters", "1") == 2
    err = capsys.readouterr().err
    assert "loss became nan at iteration 3" in err and "ckpt-000000002.pt" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000000001.pt", "ckpt-000000002.pt"]
    assert not (out / "final.pt").exists()


def test_resume_with_another_world_size_says_how(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "2") == 0
    path = next((out / "checkpoints").glob("ckpt-*.pt"))
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["world_size"] == 1 and checkpoint["global_batch"] == 8
    torch.save({**checkpoint, "world_size": 2}, path)
    capsys.readouterr()
    assert _resume(out) == 2
    err = capsys.readouterr().err.strip()
    assert "2 process(es) x batch 8" in err and "torchrun --nproc_per_node 2" in err and len(err.splitlines()) == 1


def test_a_run_of_the_retired_9_width_mobilenet_v2_is_refused_by_resume_and_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-iters", "2") == 0
    # As written before layout versions, when MobileNetV2's final conv was the 9th searchable width.
    for path in [out / "final.pt", *(out / "checkpoints").glob("ckpt-*.pt")]:
        saved = torch.load(path, weights_only=True)
        del saved["model_config"]["layout_version"]
        torch.save(saved, path)
    capsys.readouterr()
    assert _resume(out, "--max-iters", "3") == 2
    assert main(["eval", str(out), "--top-k", "1", "--calib-batches", "1"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    assert all("trained with the older 9-width MobileNetV2 space" in line and "train it again" in line
               for line in errors)


def _idx_copy_of_mini(root, change_a_label=False):
    """The shipped mini Fashion-MNIST as IDX files in ``root`` (a ``fashion-mnist:DIR`` data set)."""
    from pssnet.data.datasets import MINI_PATH

    with np.load(MINI_PATH, allow_pickle=False) as mini:
        arrays = {name: mini[name].astype(np.uint8) for name in mini.files}
    if change_a_label:
        arrays["train_labels"][0] = (arrays["train_labels"][0] + 1) % 10
    root.mkdir(parents=True)
    for prefix, split in (("train", "train"), ("t10k", "test")):
        for kind, code in (("images", 3), ("labels", 1)):
            array = arrays[f"{split}_{kind}"]
            header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            (root / f"{prefix}-{kind}-idx{code}-ubyte").write_bytes(header + array.tobytes())
    return root


def test_resume_follows_moved_data_and_refuses_other_data(tmp_path, capsys):
    first, out = _idx_copy_of_mini(tmp_path / "a"), tmp_path / "run"
    assert _train(out, "--data", f"fashion-mnist:{first}", "--max-iters", "2") == 0
    moved = first.rename(tmp_path / "b")
    capsys.readouterr()
    assert _resume(out, "--data", f"fashion-mnist:{moved}", "--max-iters", "3") == 0
    assert f"--data fashion-mnist:{first} -> fashion-mnist:{moved}" in capsys.readouterr().err
    assert json.loads((out / "config.json").read_text())["data"] == f"fashion-mnist:{moved}"
    assert load_run(out).data == f"fashion-mnist:{moved}"  # what eval reads

    other = _idx_copy_of_mini(tmp_path / "c", change_a_label=True)
    for spec in (f"fashion-mnist:{other}", "fashion-mnist-mini"):  # one label differs; another copy
        assert _resume(out, "--data", spec, "--max-iters", "4") == 2
        err = capsys.readouterr().err.strip()
        assert f"the data at {spec} is not the data this run trained on" in err and len(err.splitlines()) == 1
    assert _resume(out, "--data", f"mnist:{moved}", "--max-iters", "4") == 2  # another kind of data
    assert f"--data fashion-mnist:{moved} -> mnist:{moved}" in capsys.readouterr().err

    for path in (out / "checkpoints").glob("ckpt-*.pt"):  # as an older pssnet wrote them
        checkpoint = torch.load(path, weights_only=True)
        checkpoint.pop("data_fingerprint")
        torch.save(checkpoint, path)
    assert _resume(out, "--data", f"fashion-mnist:{other}", "--max-iters", "4") == 2
    assert f"resume with --data fashion-mnist:{moved}" in capsys.readouterr().err
    assert not list(out.glob("checkpoints/ckpt-000000004.pt")) and _resume(out, "--max-iters", "4") == 0


def test_ranks_get_their_own_torch_seeds_and_augmentation_seeds():
    from pssnet.training import TrainConfig, Trainer
    from pssnet.training.distributed import DistContext

    assert len({rank_seed(0, r) for r in range(4)}) == 4 and rank_seed(1, 0) != rank_seed(0, 0)
    seeds = []
    for rank in (0, 1):
        trainer = Trainer(TrainConfig(out="unused", batch_size=4, seed=3), DistContext(rank=rank, world_size=2))
        view = trainer._loader(list(range(64)), epoch=1, start_batch=0, iters_per_epoch=8).dataset
        seeds.append(set(view.seeds.tolist()))
        assert len(seeds[-1]) == 32
    assert not seeds[0] & seeds[1]


def test_stop_signals_second_signal_aborts_and_handlers_are_restored():
    # Python's own Ctrl-C handler as the one to restore: a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and then a second Ctrl-C is ignored too.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with StopSignals() as signals:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                assert signals.signum == signal.SIGINT  # the first one only asks to stop
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_checkpoint_and_says_how_to_resume(tmp_path, sig, status):
    out = tmp_path / "run"
    args = ["train", *TINY, "--out", str(out), "--map-cache", str(tmp_path / "maps"), "--max-iters", "2000"]
    proc = subprocess.Popen([sys.executable, "-m", "pssnet", *args], env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    last = err.strip().splitlines()[-1]
    assert f"pssnet train --out {out} --resume" in last
    checkpoints = list((out / "checkpoints").glob("ckpt-*.pt"))
    assert len(checkpoints) == 1 and not (out / "final.pt").exists()
    iteration = torch.load(checkpoints[0], weights_only=True)["iteration"]
    assert f"after iteration {iteration} " in last and iteration >= 2
    assert _resume(out, "--max-iters", str(iteration + 1)) == 0
    assert load_run(out).iterations == iteration + 1


# A training process that SIGKILLs itself halfway through writing its first checkpoint: the
# temporary file holds half a checkpoint, no complete one exists (a real kill -9, not a simulation).
_KILL_MID_WRITE = """
import os, signal, sys, torch
from pssnet.cli import main

real_save = torch.save

def save_half_then_die(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("format", "").startswith("pssnet-checkpoint"):
        with open(f, "wb") as out:
            out.write(b"PK half a checkpoint")
            out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, f, *args, **kwargs)

torch.save = save_half_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_while_the_first_checkpoint_is_written_leaves_a_resumable_run(tmp_path):
    out = tmp_path / "run"
    args = ["train", *TINY, "--out", str(out), "--map-cache", str(tmp_path / "maps"), "--max-iters", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, *args], env=env, capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list((out / "checkpoints").glob(".*.tmp")) and not list((out / "checkpoints").glob("ckpt-*.pt"))
    resumed = subprocess.run([sys.executable, "-m", "pssnet", "train", "--out", str(out), "--resume",
                              "--threads", "1", "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "starting the run from the beginning" in resumed.stderr
    assert not list((out / "checkpoints").glob(".*.tmp"))
    assert load_run(out).iterations == 2


def test_a_second_writer_process_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pssnet.training.run_dir import RunLock\n"
                               f"lock = RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "pssnet", "train", *TINY, "--out", str(out),
                                 "--max-iters", "1"], capture_output=True, text=True, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines()[-1].endswith(
        f"is being written by another pssnet train (PID {holder.pid}); wait for it to end or choose another --out")
    assert not (out / "checkpoints").exists()


def test_bad_data_leaves_no_run_directory(tmp_path, capsys):
    data = tmp_path / "data"
    for cls in ("a", "b"):
        (data / "train" / cls).mkdir(parents=True)
        (data / "test" / cls).mkdir(parents=True)
        (data / "train" / cls / "x.jpg").write_bytes(b"not a jpeg")
        (data / "test" / cls / "x.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    assert main(["train", "--arch", "mobilenet_v2", "--data", f"folder:{data}", "--constraint", "flops:auto:4",
                 "--out", str(out), "--threads", "1", "--no-progress"]) == 2
    assert "x.jpg" in capsys.readouterr().err
    assert not out.exists()
