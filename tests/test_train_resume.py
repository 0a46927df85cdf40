"""A run killed with SIGKILL and resumed ends exactly like an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pssnet.cli import main
from pssnet.training import load_run
from test_train_e2e import _args

pytestmark = pytest.mark.slow  # every test here takes several seconds

ITERS = "16"


def _metrics(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("images_per_s", None)  # wall-clock speed differs between runs
        row.pop("data_wait_fraction", None)
    return rows


def test_killed_run_resumes_exactly(tmp_path):
    straight = tmp_path / "straight"
    assert main(_args(straight, "--max-iters", ITERS, "--checkpoint-iters", "1")) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pssnet", *_args(killed, "--max-iters", ITERS,
                                                                        "--checkpoint-iters", "1")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while not list((killed / "checkpoints").glob("ckpt-00000000[4-9].pt")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait()
    assert not (killed / "final.pt").exists(), "the run finished before it was killed; the test proves nothing"

    assert main(["train", "--out", str(killed), "--resume", "--threads", "1", "--no-progress"]) == 0
    a, b = load_run(straight), load_run(killed)
    assert a.iterations == b.iterations == int(ITERS)
    assert a.pools == b.pools
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    assert _metrics(straight) == _metrics(killed)
