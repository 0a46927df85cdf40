"""End-to-end: `pssnet train` on the shipped Fashion-MNIST subset, a few iterations."""

import json

import pytest
import torch

from pssnet import Supernet, count_flops
from pssnet.cli import main
from pssnet.run_record import Holdout
from pssnet.training import load_run

# A tiny, fast set-up shared by the training tests: resolutions 16/24, three FLOPs targets.
TINY_ARGS = ["--arch", "mobilenet_v2", "--data", "fashion-mnist-mini", "--resolutions", "16:24:8",
             "--constraint", "flops:6:14:4", "--batch-size", "8", "--epochs", "1", "--threads", "1",
             "--map-samples", "5000", "--pool-size", "2", "--log-every", "2", "--no-progress", "--seed", "1"]


def _args(out, *extra):
    return ["train", *TINY_ARGS, "--out", str(out), "--map-cache", str(out.parent / "maps"), *extra]


@pytest.mark.slow
def test_train_writes_run_dir_and_fills_pools(tmp_path):
    out = tmp_path / "run"
    assert main(_args(out, "--max-iters", "14")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "mobilenet_v2" and config["resolved"]["iterations"] == 14
    assert config["resolved"]["lr"] == pytest.approx(0.3 * 8 / 1024)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_largest" in r]
    assert [r["iteration"] for r in steps] == [2, 4, 6, 8, 10, 12, 14]
    assert all(r["loss_sampled"] >= 0 and r["loss_smallest"] >= 0 and r["score"] < 0 for r in steps)
    assert rows[-1] == {"event": "done", "iteration": 14}
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())
    assert len(list((out / "checkpoints").glob("ckpt-*.pt"))) == 1

    run = load_run(out)
    (out / "final.pt").rename(out / "moved.pt")
    from_checkpoint = load_run(out)  # without final.pt: the newest checkpoint's equivalent
    (out / "moved.pt").rename(out / "final.pt")
    plain = {k: v for k, v in run.to_dict().items() if k != "state_dict"}
    assert {k: v for k, v in from_checkpoint.to_dict().items() if k != "state_dict"} == plain
    assert all(torch.equal(v, from_checkpoint.state_dict[k]) for k, v in run.state_dict.items())
    assert run.sampler == "pss" and run.iterations == 14
    assert run.data == "fashion-mnist-mini" and run.seed == 1 and run.luts == {}
    # A tenth of the 6,000 images is kept out of training for pssnet eval's selection.
    assert run.holdout == Holdout(count=600, seed=1)
    assert config["resolved"]["iterations_per_epoch"] == 5400 // 8
    net = Supernet(run.model_config)
    net.load_state_dict(run.state_dict)
    c = run.constraints[0]
    assert set(run.pools["flops"]) == {"6.0", "10.0", "14.0"}
    for key, entries in run.pools["flops"].items():
        assert 1 <= len(entries) <= 2  # every pool filled, none over size
        scores = [score for _, score in entries]
        assert scores == sorted(scores, reverse=True)
        for subnet, _ in entries:
            assert c.bucket_of(count_flops(net, subnet)) == float(key)
    assert sum(len(e) for e in run.pools["flops"].values()) >= 5


def test_uniform_sampler_and_user_errors(tmp_path, capsys):
    out = tmp_path / "uniform"
    assert main(_args(out, "--max-iters", "2", "--sampler", "uniform")) == 0
    run = load_run(out)
    assert run.sampler == "uniform" and run.pools == {}
    assert main(_args(out, "--max-iters", "2")) == 2  # the directory already holds a run
    assert "--resume" in capsys.readouterr().err
    assert main(_args(tmp_path / "bad", "--constraint", "flops:1:2")) == 2
    assert main(_args(tmp_path / "bad2", "--data", "nowhere:1")) == 2
    assert main(["train", "--out", str(tmp_path / "none"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "TYPE:START:STOP:STEP" in err and "unknown data spec" in err and "no checkpoint" in err


def test_training_never_sees_the_images_eval_selects_on():
    from pssnet.data import load_data, split_train
    from pssnet.training.data_order import without_holdout

    data = load_data("fashion-mnist-mini")
    train_set, record = without_holdout(data.train, 300, seed=5)
    assert record == {"count": 300, "seed": 5}
    # What pssnet eval holds out for a run with this record (its calibration images may be trained on).
    held_out, _ = split_train(len(data.train_eval), record["count"], 64, record["seed"])
    assert len(train_set) == 6000 - 300 and not set(train_set.indices) & set(held_out)
    assert without_holdout(data.train, 300, seed=5)[0].indices == train_set.indices  # deterministic
    assert without_holdout(data.train, 300, seed=6)[0].indices != train_set.indices
    assert without_holdout(data.train, 5000, seed=5)[1] == {"count": 600, "seed": 5}  # a tenth at most
    assert without_holdout(data.train, 0, seed=5) == (data.train, None)
