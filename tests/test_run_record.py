"""RunRecord: the ``final.pt`` contract read and written in today's exact on-disk form, and a
damaged run file named with its field in one line."""

from __future__ import annotations

import pytest
import torch

from pssnet.cli import main
from pssnet.constraints import Constraint
from pssnet.errors import UserError
from pssnet.fileio import save_atomic
from pssnet.run_record import Holdout, RunRecord
from pssnet.training import load_run
from test_deploy_fixtures import tiny_supernet


def todays_run() -> dict:
    """A run dict exactly as ``pssnet train`` writes ``final.pt`` (format ``pssnet-run/1``), key order included."""
    net = tiny_supernet()
    small, large = net.space.smallest().to_dict(), net.space.largest().to_dict()
    return {
        "format": "pssnet-run/1",
        "model_config": net.config.to_dict(),
        "state_dict": net.state_dict(),
        "constraints": [{"kind": "flops", "start": 5.0, "stop": 11.0, "step": 2.0}],
        "pools": {"flops": {"7.0": [{"subnet": small, "score": -0.25}, {"subnet": large, "score": -1.5}],
                            "9.0": []}},
        "sampler": "pss",
        "data": "fashion-mnist-mini",
        "image_size": 20,
        "luts": {"latency_cpu": {"format": "pssnet-latency/1", "entries": {"conv|a": 0.5}}},
        "seed": 3,
        "iterations": 14,
        "holdout": {"count": 600, "seed": 3},
    }


def _plain(run: dict) -> dict:
    return {k: v for k, v in run.items() if k != "state_dict"}


def test_a_run_in_todays_format_round_trips_with_typed_fields():
    data = todays_run()
    record = RunRecord.from_dict(data)
    assert record.model_config == tiny_supernet().config
    assert record.constraints == (Constraint("flops", 5, 11, 2),)
    assert record.pools["flops"]["7.0"][0] == (tiny_supernet().space.smallest(), -0.25)
    assert record.pools["flops"]["9.0"] == ()
    assert record.holdout == Holdout(count=600, seed=3) and record.image_size == 20 and record.seed == 3
    again = record.to_dict()
    assert list(again) == list(data) and _plain(again) == _plain(data)
    assert again["state_dict"].keys() == data["state_dict"].keys()
    assert all(torch.equal(v, data["state_dict"][k]) for k, v in again["state_dict"].items())
    assert again["state_dict"]._metadata == data["state_dict"]._metadata  # module versions, as torch saves them


def test_a_run_written_before_image_size_and_holdout_were_recorded_still_loads():
    data = todays_run()
    del data["image_size"], data["holdout"]
    record = RunRecord.from_dict(data)
    assert record.image_size is None and record.holdout is None


@pytest.mark.parametrize("damage, field", [
    (lambda d: d.pop("pools"), "field 'pools' is missing"),
    (lambda d: d.update(seed="one"), "field 'seed' must be an integer, got 'one'"),
    (lambda d: d.update(iterations=-1), "field 'iterations' must be"),
    (lambda d: d.update(constraints=[{"kind": "watts", "start": 1, "stop": 2, "step": 1}]),
     "field 'constraints[0]' is not a constraint"),
    (lambda d: d["pools"]["flops"]["7.0"][0].update(subnet={"resolution": 16}), "field 'pools.flops.7.0[0].subnet'"),
    (lambda d: d["pools"]["flops"]["7.0"][1].update(score="high"), "field 'pools.flops.7.0[1].score' must be a number"),
    (lambda d: d["state_dict"].update(extra=[1.0]), "field 'state_dict.extra' must be a tensor"),
    (lambda d: d.update(holdout={"count": 600}), "field 'holdout.seed' is missing"),
    (lambda d: d.update(model_config=["mobilenet_v2"]), "field 'model_config' must be a mapping"),
    (lambda d: d["model_config"].update(num_classes="ten"), "model_config: field 'num_classes' must be an integer"),
])
def test_a_run_file_with_a_missing_or_ill_typed_field_names_the_file_and_the_field(tmp_path, damage, field):
    data = todays_run()
    damage(data)
    save_atomic(data, tmp_path / "final.pt")
    with pytest.raises(UserError, match="pssnet run") as caught:
        load_run(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / "final.pt") in message and field in message and "\n" not in message


def test_pssnet_eval_of_a_damaged_run_file_is_one_line(tmp_path, capsys):
    data = todays_run()
    data["sampler"] = None
    save_atomic(data, tmp_path / "final.pt")
    assert main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "field 'sampler' must be a string" in err and "final.pt" in err
