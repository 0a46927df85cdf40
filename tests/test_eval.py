import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from pssnet.calibration import recalibrate_bn
from pssnet.resources import ResourceMeter
from pssnet.data import split_train
from pssnet.evaluation import Batches, EvalConfig, EvalResult, accuracy, evaluate_run, supernet_from_run
from pssnet.errors import UserError
from pssnet.report import pareto_csv, pareto_markdown, write_report
from pssnet.run_record import Holdout
from test_data import _write_idx
from test_deploy_fixtures import CONSTRAINT, tiny_data, tiny_run

CONFIG = EvalConfig(top_k=3, calib_batches=2, holdout=40, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def evaluated():
    run, data = tiny_run(), tiny_data()
    result, evaluator = evaluate_run(run, data, CONFIG)
    return run, data, result, evaluator


def _reference_accuracy(run, data, subnet, split):
    """Independent truth: a fresh supernet, recalibrated on the same calibration images."""
    holdout_idx, calib_idx = split_train(len(data.train_eval), CONFIG.holdout,
                                         CONFIG.calib_batches * CONFIG.batch_size, CONFIG.seed)
    net = supernet_from_run(run, torch.device("cpu"))
    net.set_subnet(subnet)
    loader = torch.utils.data.DataLoader(Subset(data.train_eval, calib_idx), batch_size=CONFIG.batch_size)
    recalibrate_bn(net, loader)
    target = Subset(data.train_eval, holdout_idx) if split == "holdout" else data.test
    return accuracy(net, torch.utils.data.DataLoader(target, batch_size=7), torch.device("cpu"))


def test_pools_give_top_k_candidates_and_best_holdout_is_kept(evaluated):
    run, data, result, _ = evaluated
    assert result.budgets, "every pool should give a budget"
    for b in result.budgets:
        pool = run.pools["flops"][repr(b.target)]
        assert [c.subnet for c in b.candidates] == [subnet for subnet, _ in pool[:3]]
        accs = [c.holdout_acc for c in b.candidates]
        assert b.selected == int(np.argmax(accs))
        best = b.best
        assert best.test_acc == pytest.approx(_reference_accuracy(run, data, best.subnet, "test"))
        assert best.holdout_acc == pytest.approx(_reference_accuracy(run, data, best.subnet, "holdout"))
        assert CONSTRAINT.bucket_of(best.resources["flops"]) == b.target
    assert set(result.extremes) == {"largest", "smallest"}
    assert all(c.test_acc is not None for c in result.extremes.values())


def test_holdout_and_calibration_splits_are_disjoint_and_deterministic():
    h1, c1 = split_train(100, 30, 40, seed=3)
    h2, c2 = split_train(100, 30, 40, seed=3)
    assert (h1, c1) == (h2, c2) and len(h1) == 30 and len(c1) == 40
    assert not set(h1) & set(c1)
    assert split_train(10, 30, 4, seed=0)[0].__len__() == 5  # never more than half


def test_select_on_test_uses_test_accuracy():
    run, data = tiny_run(), tiny_data()
    cfg = EvalConfig(top_k=3, calib_batches=2, holdout=40, batch_size=16, progress=False, select_on="test")
    result, _ = evaluate_run(run, data, cfg)
    assert result.select_on == "test"
    for b in result.budgets:
        assert b.selected == int(np.argmax([c.test_acc for c in b.candidates]))


@pytest.mark.slow
def test_uniform_run_searches_same_number_of_candidates_inside_each_bucket():
    run, data = tiny_run("uniform"), tiny_data()
    result, _ = evaluate_run(run, data, CONFIG)
    net = supernet_from_run(run, torch.device("cpu"))
    res, widths = net.space.sample_arrays(50_000, np.random.default_rng(1))
    reachable = set(np.unique(CONSTRAINT.bucket_of(ResourceMeter(net.layout).measure_arrays("flops", res, widths))))
    assert {b.target for b in result.budgets} == reachable & set(CONSTRAINT.targets)
    for b in result.budgets:
        assert len(b.candidates) == CONFIG.top_k
        assert len({c.subnet for c in b.candidates}) == CONFIG.top_k
        assert all(CONSTRAINT.bucket_of(c.resources["flops"]) == b.target for c in b.candidates)
        assert all(c.score is None for c in b.candidates)


def test_result_round_trips_through_json_and_reports_are_written(evaluated, tmp_path):
    import json

    _, _, result, _ = evaluated
    again = EvalResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_dict() == result.to_dict()
    csv_text = pareto_csv([result])
    assert csv_text.count("\n") == 1 + sum(len(b.candidates) for b in result.budgets) + 2
    assert csv_text.count(",selected,") == len(result.budgets)
    md = pareto_markdown(result, [again])
    assert "| flops 5 |" in md and "Comparison" in md
    paths = write_report(result, tmp_path, [again])
    assert paths["png"].stat().st_size > 1000


def test_bad_config_and_empty_runs_are_clear_errors():
    with pytest.raises(UserError, match="--select-on"):
        EvalConfig(select_on="validation")
    with pytest.raises(UserError, match="--top-k"):
        EvalConfig(top_k=0)
    run = dataclasses.replace(tiny_run(), constraints=())
    with pytest.raises(UserError, match="--constraint"):
        evaluate_run(run, tiny_data(), CONFIG)


def test_batches_are_fixed_across_passes():
    data = tiny_data()
    b = Batches(data.test, 16)
    first = [x.sum().item() for x, _ in b]
    assert first == [x.sum().item() for x, _ in b] and len(first) == 3


@pytest.mark.slow
def test_cli_eval_writes_report_and_bundle_and_compares(tmp_path, capsys):
    from pssnet.cli import main
    from pssnet.deploy import AdaptiveNet

    for name, sampler in (("pss", "pss"), ("uni", "uniform")):
        (tmp_path / name).mkdir()
        torch.save(tiny_run(sampler, num_classes=10, data="fashion-mnist-mini").to_dict(), tmp_path / name / "final.pt")
    common = ["--top-k", "2", "--calib-batches", "1", "--holdout", "32", "--batch-size", "100"]
    assert main(["eval", str(tmp_path / "uni"), *common, "--no-bundle"]) == 0
    assert (tmp_path / "uni" / "eval.json").is_file() and not (tmp_path / "uni" / "adaptive.pt").exists()
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "pss"), *common, "--compare", str(tmp_path / "uni")]) == 0
    out = capsys.readouterr().out
    assert "| flops 5 |" in out and "uni (uniform)" in out
    for name in ("pareto.csv", "pareto.md", "pareto.png", "eval.json", "adaptive.pt"):
        assert (tmp_path / "pss" / name).is_file(), name
    adaptive = AdaptiveNet.load(tmp_path / "pss" / "adaptive.pt")
    assert adaptive.info["data"] == "fashion-mnist-mini" and adaptive.info["image_size"] == 28

    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_evaluating_on_another_data_set_ignores_the_recorded_holdout(tmp_path):
    from pssnet.workflows.evaluate import _run_and_data
    from pssnet.fileio import save_atomic

    save_atomic({**tiny_run(data="fashion-mnist-mini").to_dict(), "holdout": {"count": 600, "seed": 1}},
                tmp_path / "final.pt")
    run, data = _run_and_data(tmp_path, None)
    assert run.holdout == Holdout(count=600, seed=1) and len(data.train) == 6000
    # Those indices name images of the mini set; on another data set they would mean other images.
    other = tmp_path / "mnist"
    other.mkdir()
    for prefix in ("train", "t10k"):
        _write_idx(other / f"{prefix}-images-idx3-ubyte", np.zeros((20, 28, 28), np.uint8), compress=False)
        _write_idx(other / f"{prefix}-labels-idx1-ubyte", np.arange(20) % 10, compress=False)
    run, data = _run_and_data(tmp_path, f"mnist:{other}")
    assert run.holdout is None and len(data.train) == 20


def test_compare_reuses_eval_json_only_with_the_same_settings(tmp_path, capsys):
    import json

    from pssnet.evaluation import load_eval
    from pssnet.workflows import evaluate_run_dir, reuse_mismatch

    for name, sampler in (("pss", "pss"), ("uni", "uniform")):
        (tmp_path / name).mkdir()
        torch.save(tiny_run(sampler, num_classes=10, data="fashion-mnist-mini").to_dict(), tmp_path / name / "final.pt")
    config = EvalConfig(top_k=2, calib_batches=1, holdout=32, batch_size=100, progress=False)
    evaluate_run_dir(tmp_path / "uni", config, bundle=False)
    saved_path = tmp_path / "uni" / "eval.json"
    saved = json.loads(saved_path.read_text())
    assert saved["settings"]["config"] == {"top_k": 2, "calib_batches": 1, "holdout": 32, "select_on": "holdout",
                                           "batch_size": 100, "seed": 0, "data": "fashion-mnist-mini"}
    saved["name"] = "saved-uni"  # marks the saved result: it shows in the report only when reused
    saved_path.write_text(json.dumps(saved))
    capsys.readouterr()

    def compared_name(cfg) -> str:
        _, paths = evaluate_run_dir(tmp_path / "pss", cfg, compare=[tmp_path / "uni"], bundle=False)
        return "saved-uni" if "saved-uni (uniform)" in paths["md"].read_text() else "uni"

    assert compared_name(config) == "saved-uni" and "again" not in capsys.readouterr().err
    assert compared_name(dataclasses.replace(config, top_k=3)) == "uni"
    assert "top_k=2 instead of top_k=3" in capsys.readouterr().err
    assert compared_name(dataclasses.replace(config, device="cpu", cache_bytes=0)) == "saved-uni"

    del saved["settings"]["config"]  # an eval.json written before the settings were recorded
    saved_path.write_text(json.dumps(saved))
    assert compared_name(config) == "uni" and "no recorded settings" in capsys.readouterr().err

    result = load_eval(tmp_path / "pss" / "eval.json")
    assert reuse_mismatch(result, config, None) is None
    assert reuse_mismatch(result, config, "fashion-mnist-mini") is None
    assert "data=" in reuse_mismatch(result, config, "mnist:/elsewhere")
    for field, other in (("top_k", 4), ("calib_batches", 2), ("holdout", 64), ("select_on", "test"),
                         ("seed", 1), ("batch_size", 50)):
        why = reuse_mismatch(result, dataclasses.replace(config, **{field: other}), None)
        assert why == f"{field}={getattr(config, field)!r} instead of {field}={other!r}"
