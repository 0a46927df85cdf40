"""Issue 20's run, data, file and message items: foreign and misnamed checkpoints, a bad image found
mid-run, unreachable budgets, non-UTF-8 names, symlink loops, ill-typed metrics lines, subnets
outside the space, refused pickles and calibration arguments.

The two data-loss cases (items 1 and 2) run the real CLI in subprocesses on real run directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pssnet
from pssnet.calibration import BatchCountError, bn_statistics
from pssnet.cli import main
from pssnet.constraints import Constraint, check_reachable
from pssnet.errors import UserError
from pssnet.fileio import output_file
from pssnet.resources import ResourceMeter
from pssnet.space import SpaceError, Subnet
from pssnet.supernet import SubnetTypeError
from pssnet.training import load_run
from pssnet.training.checkpoint import RUN_ID_NAME, read_run_id
from pssnet.training.data_order import epoch_order
from pssnet.training.run_log import read_metrics, truncate_metrics

TINY = ["--preset", "mini-mbv2", "--batch-size", "8", "--threads", "1", "--map-samples", "2000", "--no-progress",
        "--holdout", "0", "--log-every", "1", "--constraint", "flops:15:20:5"]
QUICK_EVAL = ["--top-k", "1", "--calib-batches", "1", "--holdout", "64", "--batch-size", "256", "--no-bundle"]


def _pssnet(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    """``pssnet ARGS`` in a subprocess (one thread), as a user runs it."""
    return subprocess.run([sys.executable, "-m", "pssnet", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _one_line(result: subprocess.CompletedProcess, command: str = "train") -> str:
    err = result.stderr.strip()
    assert result.returncode == 2 and err.count("\n") == 0 and err.startswith(f"pssnet {command}: error: "), err
    return err


def _train(out, *extra) -> int:
    return main(["train", *TINY, "--out", str(out), "--map-cache", str(out.parent / "maps"), *extra])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished runs: A (5 iterations, checkpoint 5) and B (3 iterations, checkpoints 1-3)."""
    root = tmp_path_factory.mktemp("runs")
    assert _train(root / "a", "--max-iters", "5", "--seed", "1") == 0
    assert _train(root / "b", "--max-iters", "3", "--checkpoint-iters", "1") == 0
    return root / "a", root / "b"


def _copy(run, tmp_path, name="run"):
    return shutil.copytree(run, tmp_path / name)


# ---------------------------------------------------------------- item 1: checkpoints prove their run


def test_every_run_file_records_the_run_id(two_runs):
    a, b = two_runs
    run_id = read_run_id(b)
    assert run_id and run_id != read_run_id(a)
    for path in [*sorted((b / "checkpoints").glob("ckpt-*.pt")), b / "final.pt"]:
        assert torch.load(path, weights_only=True)["run_id"] == run_id, path


@pytest.mark.slow
def test_a_foreign_or_misnamed_checkpoint_is_set_aside_and_the_run_resumes_its_own(two_runs, tmp_path):
    a, b = two_runs
    run = _copy(b, tmp_path)
    shutil.copy(a / "checkpoints" / "ckpt-000000005.pt", run / "checkpoints" / "ckpt-000000099.pt")
    shutil.copy(run / "checkpoints" / "ckpt-000000002.pt", run / "checkpoints" / "ckpt-000000098.pt")
    own = {p.name: p.read_bytes() for p in (run / "checkpoints").glob("ckpt-00000000[123].pt")}

    result = _pssnet("train", "--out", run, "--resume", "--threads", "1", "--no-progress", "--max-iters", "4")
    assert result.returncode == 0, result.stderr
    assert (f"note: set aside {run / 'checkpoints' / 'ckpt-000000099.pt'}: it belongs to another run (run id "
            f"{read_run_id(a)}, not this run's {read_run_id(run)}); renamed to ckpt-000000099.pt.foreign") \
        in result.stderr
    assert ("ckpt-000000098.pt: its iteration 2 does not match its name 98; renamed to ckpt-000000098.pt.misnamed"
            in result.stderr)
    assert "unreadable" not in result.stderr
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["ckpt-000000002.pt", "ckpt-000000003.pt", "ckpt-000000004.pt", "ckpt-000000098.pt.misnamed",
                     "ckpt-000000099.pt.foreign"]  # keep 3: the run's own oldest went, nothing set aside did
    assert all((run / "checkpoints" / name).read_bytes() == data for name, data in own.items()
               if (run / "checkpoints" / name).exists())
    assert load_run(run).iterations == 4  # continued from its own iteration 3, not the foreign 5


@pytest.mark.slow
def test_pssnet_eval_skips_a_foreign_checkpoint_and_refuses_a_foreign_final_pt(two_runs, tmp_path):
    a, b = two_runs
    run = _copy(b, tmp_path)
    (run / "final.pt").unlink()
    shutil.copy(a / "checkpoints" / "ckpt-000000005.pt", run / "checkpoints" / "ckpt-000000099.pt")
    result = _pssnet("eval", run, *QUICK_EVAL)
    assert result.returncode == 0, result.stderr
    foreign = run / "checkpoints" / "ckpt-000000099.pt"
    assert result.stderr.splitlines()[0] == (f"note: skipped {foreign}: it belongs to another run (run id "
                                             f"{read_run_id(a)}, not this run's {read_run_id(run)})")
    assert json.loads((run / "eval.json").read_text())["settings"]["iterations"] == 3

    shutil.copy(a / "final.pt", run / "final.pt")
    err = _one_line(_pssnet("eval", run, *QUICK_EVAL), "eval")
    assert f"{run / 'final.pt'} is not this run's: it belongs to another run" in err
    assert "move it away" in err


def test_a_run_whose_checkpoints_all_fail_names_each_reason(two_runs, tmp_path):
    a, b = two_runs
    run = _copy(b, tmp_path)
    (run / "final.pt").unlink()
    for path in (run / "checkpoints").iterdir():
        path.unlink()
    shutil.copy(a / "checkpoints" / "ckpt-000000005.pt", run / "checkpoints" / "ckpt-000000005.pt")
    (run / "checkpoints" / "ckpt-000000007.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(UserError) as info:
        load_run(run)
    message = str(info.value)
    assert "\n" not in message and "none of its checkpoints can be used" in message
    assert "ckpt-000000007.pt: unreadable (truncated" in message and "ckpt-000000005.pt: it belongs to another run" \
        in message


def test_a_run_of_an_older_pssnet_without_run_ids_still_resumes_and_evaluates(two_runs, tmp_path, capsys):
    run = _copy(two_runs[1], tmp_path)
    (run / RUN_ID_NAME).unlink()
    for path in [*(run / "checkpoints").glob("ckpt-*.pt"), run / "final.pt"]:  # as an older pssnet wrote them
        content = torch.load(path, weights_only=True)
        content.pop("run_id")
        torch.save(content, path)
    assert load_run(run).iterations == 3
    assert main(["train", "--out", str(run), "--resume", "--threads", "1", "--no-progress", "--max-iters", "4"]) == 0
    assert "set aside" not in capsys.readouterr().err
    assert load_run(run).iterations == 4 and read_run_id(run) is None  # it stays a run without an id
    assert torch.load(run / "checkpoints" / "ckpt-000000004.pt", weights_only=True)["run_id"] is None


def test_a_damaged_run_id_file_is_one_line(two_runs, tmp_path):
    run = _copy(two_runs[1], tmp_path)
    (run / RUN_ID_NAME).write_text("not an id\n")
    with pytest.raises(UserError, match=f"{RUN_ID_NAME} is damaged"):
        load_run(run)


# ---------------------------------------------------------------- item 2: a bad image found mid-run

FOLDER_PER_CLASS = 40  # 80 training images: more than the 64 the folder check decodes up front
FOLDER_BATCH = 8


def _jpeg_folder(root):
    rng = np.random.default_rng(0)
    for split, count in (("train", FOLDER_PER_CLASS), ("val", 4)):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:03d}.jpg", quality=95)
    return root


def _truncate_one_the_check_skips(root):
    """Truncate a training JPEG that the folder check does not decode and that epoch 0 reaches after
    its third batch; returns its path (a truncated body passes every header check)."""
    from pssnet.data.folders import SIZE_SAMPLE, _spread

    paths = sorted((root / "train").glob("*/*.jpg"))  # ImageFolder's order: class, then file name
    checked = set(_spread(len(paths), SIZE_SAMPLE))
    position = {int(index): pos for pos, index in enumerate(epoch_order(len(paths), 0, 0))}
    index = next(i for i in range(len(paths)) if i not in checked and position[i] // FOLDER_BATCH >= 3)
    data = paths[index].read_bytes()
    paths[index].write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError):  # the pixels cannot be decoded, though the header reads
        Image.open(paths[index]).convert("RGB")
    return paths[index], position[index] // FOLDER_BATCH


def _folder_train_args(data, out):
    return ["train", "--arch", "mobilenet_v2", "--data", f"folder:{data}", "--constraint", "flops:auto:3",
            "--batch-size", str(FOLDER_BATCH), "--epochs", "2", "--threads", "1", "--num-workers", "0",
            "--holdout", "0", "--map-samples", "2000", "--map-cache", str(out.parent / "maps"), "--no-progress",
            "--checkpoint-iters", "100", "--log-every", "1", "--out", str(out)]


@pytest.mark.slow
def test_a_bad_image_mid_run_keeps_the_work_and_the_run_resumes_after_removing_it(tmp_path):
    data, run = _jpeg_folder(tmp_path / "data"), tmp_path / "run"
    bad, batch = _truncate_one_the_check_skips(data)

    err = _one_line(_pssnet(*_folder_train_args(data, run)))
    assert f"{bad} is not a readable image" in err
    assert f"(checkpoint written after iteration {batch}), then continue with: pssnet train --out {run} --resume " \
           "--accept-data-change" in err
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"ckpt-{batch:09d}.pt"]
    assert max(r["iteration"] for r in read_metrics(run / "metrics.jsonl")) == batch
    before = torch.load(run / "checkpoints" / f"ckpt-{batch:09d}.pt", weights_only=True)["data_fingerprint"]

    bad.unlink()  # as the message advises
    err = _one_line(_pssnet("train", "--out", run, "--resume", "--threads", "1", "--no-progress"))
    assert "is not the data this run trained on" in err and "--accept-data-change" in err

    (data / "train" / "bird").mkdir()  # other data, not a changed file list: the model would not fit
    shutil.copy(next((data / "train" / "cat").iterdir()), data / "train" / "bird" / "0.jpg")
    shutil.copytree(data / "train" / "bird", data / "val" / "bird")
    err = _one_line(_pssnet("train", "--out", run, "--resume", "--accept-data-change", "--threads", "1"))
    assert "needs another model than this run's (num_classes 2 -> 3)" in err
    shutil.rmtree(data / "train" / "bird")
    shutil.rmtree(data / "val" / "bird")

    twin = shutil.copytree(run, tmp_path / "twin")  # the same resume twice: the data order stays deterministic
    for directory in (run, twin):
        result = _pssnet("train", "--out", directory, "--resume", "--accept-data-change", "--threads", "1",
                         "--no-progress")
        assert result.returncode == 0, result.stderr
        assert f"continuing on it (--accept-data-change), recorded in {directory / 'data-changes.jsonl'}" \
            in result.stderr
    changes = [json.loads(line) for line in (run / "data-changes.jsonl").read_text().splitlines()]
    assert len(changes) == 1 and changes[0]["iteration"] == batch and changes[0]["fingerprint_before"] == before
    assert changes[0]["fingerprint"] != before and changes[0]["date"]
    assert [r for r in read_metrics(run / "metrics.jsonl") if r.get("event") == "data_change"] == changes
    finished, again = load_run(run), load_run(twin)
    assert finished.iterations == 2 * ((2 * FOLDER_PER_CLASS - 1) // FOLDER_BATCH)  # the epochs of 79 images
    assert all(torch.equal(finished.state_dict[k], again.state_dict[k]) for k in finished.state_dict)

    # The checkpoints now record the data as it is: a later resume needs no flag.
    result = _pssnet("train", "--out", run, "--resume", "--threads", "1", "--no-progress", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    assert len((run / "data-changes.jsonl").read_text().splitlines()) == 1


def test_accept_data_change_needs_resume(tmp_path, capsys):
    assert _train(tmp_path / "run", "--max-iters", "1", "--accept-data-change") == 2
    assert "use it with --resume" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- item 10: no reachable target


def test_a_grid_no_subnet_reaches_is_one_line_in_a_subprocess(tmp_path):
    out = tmp_path / "run"
    err = _one_line(_pssnet("train", *TINY[:-2], "--out", out, "--map-cache", tmp_path / "maps",
                            "--constraint", "flops:100000:200000:1000", "--max-iters", "1"))
    assert "no budget target can be reached by this search space: flops:100000:200000:1000 (the subnets span " in err
    assert "MFLOPs); choose targets inside that range, or TYPE:auto" in err
    assert not out.exists()


def test_one_reachable_grid_is_enough():
    net = pssnet.create_supernet("mobilenet_v2", 10, 1, True)
    meter = ResourceMeter(net.layout)
    check_reachable([Constraint.parse("flops:11:24:1")], meter, net.space)
    check_reachable([Constraint.parse("flops:24:30:1")], meter, net.space)  # the largest subnet's bucket is 24
    check_reachable([Constraint.parse("flops:100:200:1"), Constraint.parse("params:0.01:10:0.01")], meter, net.space)
    with pytest.raises(UserError, match="flops:25:30:1"):
        check_reachable([Constraint.parse("flops:25:30:1")], meter, net.space)


# ---------------------------------------------------------------- item 11: names that are not UTF-8


def test_an_out_path_that_is_not_utf8_is_refused_before_anything_is_created(tmp_path):
    bad = os.fsdecode(bytes(tmp_path) + b"/bad\xffname")
    err = _one_line(_pssnet("train", *TINY, "--out", bad, "--max-iters", "1"))
    assert "bad\\xffname: the path is not UTF-8 text" in err
    assert os.listdir(tmp_path) == []  # no .lock, no tb/: a retry under a good name just works
    assert main(["eval", str(tmp_path), "--out", bad]) == 2


def test_an_image_file_name_that_is_not_utf8_trains(tmp_path):
    data = _jpeg_folder(tmp_path / "data")
    plain = pssnet.data.data_fingerprint(pssnet.data.load_data(f"folder:{data}"))
    odd = os.fsdecode(bytes(data / "train" / "cat") + b"/bad\xffname.jpg")
    shutil.copy(data / "train" / "cat" / "000.jpg", odd)
    assert pssnet.data.data_fingerprint(pssnet.data.load_data(f"folder:{data}")) != plain  # was UnicodeEncodeError
    assert main([*_folder_train_args(data, tmp_path / "run"), "--max-iters", "2"]) == 0
    assert load_run(tmp_path / "run").iterations == 2


def test_a_class_folder_name_that_is_not_utf8_is_one_line(tmp_path):
    data = _jpeg_folder(tmp_path / "data")
    for split in ("train", "val"):
        os.rename(data / split / "dog", os.fsdecode(bytes(data / split) + b"/d\xffg"))
    with pytest.raises(UserError, match=r"the class folder d\\xffg in .* is not UTF-8 text; rename it"):
        pssnet.data.load_data(f"folder:{data}")


# ---------------------------------------------------------------- item 12: symbolic-link loops


@pytest.fixture
def loop(tmp_path):
    (tmp_path / "loop").symlink_to("loop")
    return tmp_path / "loop"


def test_a_symlink_loop_in_out_is_one_line(loop, tmp_path, capsys):
    assert _train(loop / "x", "--max-iters", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err == f"pssnet train: error: --out {loop / 'x'}: {loop} is a loop of symbolic links; fix the link or " \
                  "choose another path"
    with pytest.raises(UserError, match=f"-o {loop / 'in' / 't.json'}: {loop} is a loop of symbolic links"):
        output_file(loop / "in" / "t.json")


def test_eval_checks_its_output_path_before_the_evaluation(loop, two_runs, monkeypatch, capsys):
    from pssnet.cli import eval_cmd

    def evaluation_must_not_start(*args, **kwargs):
        raise AssertionError("evaluated before checking --out")

    monkeypatch.setattr(eval_cmd, "evaluate_run_dir", evaluation_must_not_start)
    assert main(["eval", str(two_runs[1]), "--out", str(loop / "x")]) == 2
    assert f"--out {loop / 'x'}: {loop} is a loop of symbolic links" in capsys.readouterr().err


def test_eval_into_a_run_directory_it_cannot_write_fails_before_the_evaluation(two_runs, tmp_path, monkeypatch,
                                                                              capsys):
    from pssnet.cli import eval_cmd

    monkeypatch.setattr(eval_cmd, "evaluate_run_dir", lambda *a, **k: pytest.fail("evaluated before the check"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a read-only run directory
    assert main(["eval", str(two_runs[1])]) == 2
    assert "RUN_DIR (the default --out)" in capsys.readouterr().err


# ---------------------------------------------------------------- item 13: ill-typed metrics lines


def test_an_ill_typed_metrics_line_is_dropped_like_a_torn_one(two_runs, tmp_path, capsys):
    run = _copy(two_runs[1], tmp_path)
    path = run / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"iteration": "five"}\n')
    truncate_metrics(path, 2)  # was: TypeError: '<=' not supported between 'str' and 'int'
    assert "dropped the last line" in capsys.readouterr().err and '"five"' not in path.read_text()
    assert max(r.get("iteration", 0) for r in read_metrics(path)) == 2

    lines = path.read_text().splitlines()
    lines[1] = '{"iteration": true}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is damaged \(its iteration is True, not a whole "):
        read_metrics(path)


def test_resume_after_an_ill_typed_last_metrics_line(two_runs, tmp_path, capsys):
    run = _copy(two_runs[1], tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"iteration": "five"}\n')
    assert main(["train", "--out", str(run), "--resume", "--threads", "1", "--no-progress", "--max-iters", "4"]) == 0
    assert "its iteration is 'five', not a whole number" in capsys.readouterr().err
    assert [r["iteration"] for r in read_metrics(run / "metrics.jsonl") if "loss_largest" in r] == [1, 2, 3, 4]


# ---------------------------------------------------------------- item 18: subnets outside the space


def test_counting_a_subnet_outside_the_space_is_refused_as_canonicalize_does():
    net = pssnet.create_supernet("mobilenet_v2", 10, 1, True)
    largest = net.space.largest()
    wide = Subnet(largest.resolution, (3.0,) * len(largest.widths))
    for count in (pssnet.count_flops, pssnet.count_params, pssnet.count_macs):
        with pytest.raises(SpaceError, match=r"width 3.0 of stage '\w+' is outside \[0.75, 1.0\]"):
            count(net, wide)
        with pytest.raises(SpaceError, match="is outside"):
            count(net.layout, wide, net.space)
        with pytest.raises(SpaceError, match="resolution 1000 is not in the space"):
            count(net, Subnet(1000, largest.widths))
        with pytest.raises(SpaceError, match="widths but"):
            count(net.layout, Subnet(32, (1.0,)))
        with pytest.raises(TypeError, match="expected a Subnet, got str"):
            count(net, largest.key)
    with pytest.raises(SpaceError):
        pssnet.canonicalize(net, wide)
    assert pssnet.count_flops(net, largest) == pssnet.count_flops(net.layout, largest)  # a Layout alone still counts


# ---------------------------------------------------------------- item 19: a refused pickle


def test_a_refused_pickle_is_one_line_without_torch_warnings(tmp_path):
    import pickle

    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "final.pt", "wb") as f:
        pickle.dump({"format": "pssnet-run/1", "code": pickle.loads(pickle.dumps(os.getcwd))}, f, protocol=4)
    err = _one_line(_pssnet("eval", tmp_path / "run"), "eval")
    assert "(UnpicklingError)" in err


# ---------------------------------------------------------------- item 21: calibration and set_subnet


def test_a_bad_calibration_count_is_a_clear_error_before_anything_changes():
    net = pssnet.create_supernet("mobilenet_v2", 10, 1, True)
    before = bn_statistics(net)
    batches = [torch.randn(2, 1, 28, 28)]
    for bad in (-1, 0, 1.5, True, "2"):
        with pytest.raises(BatchCountError, match=f"num_batches must be a whole number >= 1 .*, got {bad!r}"):
            pssnet.recalibrate_bn(net, batches, bad)
        assert isinstance(BatchCountError("x"), ValueError)
    after = bn_statistics(net)
    assert all(torch.equal(before[k][0], after[k][0]) and torch.equal(before[k][1], after[k][1]) for k in before)
    assert pssnet.recalibrate_bn(net, batches, np.int64(1)) is net


def test_set_subnet_with_a_key_says_to_pass_a_subnet():
    net = pssnet.create_supernet("mobilenet_v2", 10, 1, True)
    key = net.space.smallest().key
    with pytest.raises(SubnetTypeError, match=r"set_subnet takes a Subnet, got str 'r.*'; pass Subnet\(resolution"):
        net.set_subnet(key)
    assert isinstance(SubnetTypeError("x"), TypeError) and isinstance(SubnetTypeError("x"), UserError)
    assert net.active_subnet == net.space.largest()  # unchanged


def test_a_lost_run_id_file_is_named_with_the_id_to_restore(tmp_path, capsys):
    """Checkpoints that all record one run id in a directory without ``run-id`` lost that file:
    the run is not set aside and started again; the message says how to restore it."""
    from pssnet.cli import main

    out = tmp_path / "run"
    args = ["train", "--preset", "mini-mbv2", "--max-iters", "2", "--batch-size", "8", "--threads", "1",
            "--map-samples", "20000", "--no-progress", "--checkpoint-iters", "1", "--out", str(out)]
    assert main(args) == 0
    run_id = (out / "run-id").read_text().strip()
    (out / "run-id").unlink()
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "3", "--no-progress"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and f"echo {run_id} > {out / 'run-id'}" in error
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before  # nothing set aside
