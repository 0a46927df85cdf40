"""torchrun with 2 gloo processes on CPU: identical pools and subnets; a failing rank ends the run."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from pssnet.training import load_run
from pssnet.training.distributed import digest
from test_train_e2e import _args

pytestmark = pytest.mark.slow  # every test here takes several seconds

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_two_gloo_ranks_train_identically(tmp_path):
    out = tmp_path / "ddp"
    proc = subprocess.run([*TORCHRUN, "-m", "pssnet", *_args(out, "--max-iters", "8")], env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ranks = next(r for r in rows if r.get("event") == "ranks")
    run = load_run(out)
    assert ranks["pool_digests"] == [digest(run.to_dict()["pools"])] * 2  # both ranks hold rank 0's saved pools
    assert len(ranks["sequence_digests"]) == 2 and len(set(ranks["sequence_digests"])) == 1
    config = json.loads((out / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2
    assert config["resolved"]["lr"] == 0.3 * 16 / 1024  # linear scaling with the global batch
    assert sum(len(e) for e in run.pools["flops"].values()) >= 3


def test_failing_rank_exits_non_zero_with_message(tmp_path):
    script = tmp_path / "failing_train.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from pssnet.training import step
        original = step.SandwichStep.__call__
        calls = []
        def failing(self, *args, **kwargs):
            calls.append(1)
            if os.environ["RANK"] == "1" and len(calls) == 3:
                raise RuntimeError("injected failure on purpose")
            return original(self, *args, **kwargs)
        step.SandwichStep.__call__ = failing
        from pssnet.cli import main
        sys.exit(main(sys.argv[1:]))
    """))
    start = time.monotonic()
    proc = subprocess.run([*TORCHRUN, str(script), *_args(tmp_path / "fail", "--max-iters", "200")],
                          env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode != 0
    assert "rank 1 of 2 failed: RuntimeError: injected failure on purpose" in proc.stderr
    assert time.monotonic() - start < 200
    assert not (tmp_path / "fail" / "final.pt").exists()


def test_ctrl_c_under_torchrun_checkpoints_and_the_named_command_resumes(tmp_path):
    """Ctrl-C in a terminal signals torchrun's process group; torchrun forwards it to its workers
    (which run in sessions of their own). Both ranks stop at the same iteration after a
    checkpoint, the message names the torchrun command, and that command finishes the run."""
    import signal

    out = tmp_path / "ddp"
    proc = subprocess.Popen([*TORCHRUN, "-m", "pssnet", *_args(out, "--max-iters", "400")], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        metrics = out / "metrics.jsonl"
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_text().count("loss_largest") >= 2:
                break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0 and not (out / "final.pt").exists()
    command = f"torchrun --nproc_per_node 2 -m pssnet train --out {out} --resume"
    assert f"(checkpoint written); continue with: {command}" in stderr, stderr[-3000:]
    stopped = int(stderr.split("after iteration ")[1].split()[0])
    assert 4 <= stopped < 24 and list((out / "checkpoints").glob(f"ckpt-{stopped:09d}.pt"))

    resumed = subprocess.run([*TORCHRUN, "-m", "pssnet", *_args(out, "--max-iters", "24", "--resume")],
                             env=_env(), capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1] == {"event": "done", "iteration": 24} and (out / "final.pt").exists()
    assert [r["iteration"] for r in rows if "loss_largest" in r] == list(range(2, 25, 2))  # one log, no gap


def test_a_presets_batch_is_the_same_global_batch_at_world_size_1_and_2(tmp_path):
    """A preset's batch is split over the processes: the same global batch, lr, schedule and
    subnets at 1 and 2 ranks, and the run line says both batches; the run resumes."""
    args = ["train", "--preset", "mini-mbv2", "--max-iters", "2", "--threads", "1", "--map-samples", "5000",
            "--map-cache", str(tmp_path / "maps"), "--no-progress"]
    runs = {1: tmp_path / "one", 2: tmp_path / "two"}
    resolved, checkpoints = {}, {}
    for world, out in runs.items():
        launcher = [sys.executable, "-m", "pssnet"] if world == 1 else [*TORCHRUN, "-m", "pssnet"]
        proc = subprocess.run([*launcher, *args, "--out", str(out)], env=_env(), capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        processes = "1 process" if world == 1 else "2 processes"
        assert f"batch {64 // world} per process x {processes} = global batch 64" in proc.stdout
        assert "flops:11:24:1 (14 targets)" in proc.stdout
        resolved[world] = json.loads((out / "config.json").read_text())["resolved"]
        checkpoints[world] = torch.load(out / "checkpoints" / "ckpt-000000002.pt", weights_only=True)
        assert (resolved[world]["batch_per_process"], resolved[world]["global_batch"]) == (64 // world, 64)
        assert (checkpoints[world]["world_size"], checkpoints[world]["global_batch"]) == (world, 64)
    for key in ("lr", "iterations_per_epoch", "iterations"):
        assert resolved[1][key] == resolved[2][key], key
    assert checkpoints[1]["sequence"] == checkpoints[2]["sequence"]  # the same subnets, iteration by iteration

    resumed = subprocess.run([sys.executable, "-m", "pssnet", "train", "--out", str(runs[1]), "--resume",
                              "--max-iters", "3", "--no-progress"], env=_env(), capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "batch 64 per process x 1 process = global batch 64" in resumed.stdout
    assert torch.load(runs[1] / "final.pt", weights_only=True)["iterations"] == 3
