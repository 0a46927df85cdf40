"""`pssnet train` refuses every out-of-range or non-finite number with one line naming its flag."""

import subprocess
import sys

import pytest

from pssnet.cli import main
from pssnet.training import TrainConfig
from pssnet.options import check_bounds

BAD = [
    ("--lr", "nan"), ("--lr", "-0.1"), ("--lr", "inf"),
    ("--momentum", "1"), ("--momentum", "-0.5"), ("--weight-decay", "-1e-4"), ("--weight-decay", "nan"),
    ("--label-smoothing", "1"), ("--warmup-epochs", "-1"), ("--ema", "1.0"), ("--ema", "nan"),
    ("--p-range", "0:0.01"), ("--p-range", "1.0:nan"), ("--p-range", "1.5:0.01"), ("--t-range", "1.0:0"),
    ("--t-range", "-1:0.01"), ("--checkpoint-minutes", "0"), ("--checkpoint-minutes", "inf"),
    ("--checkpoint-iters", "-1"), ("--dropout", "1"), ("--dropout", "-0.1"), ("--dropout", "nan"),
    ("--threads", "-1"), ("--threads", "0"), ("--seed", "-1"), ("--seed", str(2**32)),
    ("--num-workers", "-1"), ("--map-samples", "0"), ("--keep-checkpoints", "0"), ("--max-iters", "0"),
]


@pytest.mark.parametrize("flag,value", BAD)
def test_bad_number_is_one_line_naming_the_flag(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    assert main(["train", "--preset", "mini-mbv2", "--out", str(out), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flag in err, err
    assert not out.exists()  # refused before anything is written


def test_bounds_accept_the_edges():
    config = TrainConfig(seed=2**32 - 1, threads=1)
    config.recipe.momentum, config.recipe.weight_decay, config.dropout = 0.0, 0.0, 0.0
    config.sampler.p0, config.sampler.p1, config.sampler.map_samples = 1.0, 1e-9, 2
    check_bounds(config)  # no error


def test_width_range_elements_are_checked():
    with pytest.raises(Exception, match="width_range must be above 0"):
        check_bounds(TrainConfig(width_range=[0.0, 1.0]))


def test_cli_subprocess_exit_status_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pssnet", "train", "--preset", "mini-mbv2", "--out",
                           str(tmp_path / "run"), "--lr", "nan"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["pssnet train: error: --lr must be a finite number, got nan"]
