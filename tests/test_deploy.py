import itertools

import numpy as np
import pytest
import torch

import pssnet
from pssnet.cli import main
from pssnet.cli.budgets import parse_trace
from pssnet.deploy import (AdaptiveNet, RetainedSubnet, example_input, export_static, load_static, make_bundle,
                           run_export, save_bundle)
from pssnet.errors import UserError
from pssnet.evaluation import EvalConfig, evaluate_run
from test_deploy_fixtures import IMAGE_SIZE, tiny_data, tiny_run, tiny_supernet

CONFIG = EvalConfig(top_k=2, calib_batches=2, holdout=40, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    run = tiny_run()
    result, evaluator = evaluate_run(run, tiny_data(), CONFIG)
    path = tmp_path_factory.mktemp("bundle") / "adaptive.pt"
    save_bundle(make_bundle(run, result, evaluator.stats, IMAGE_SIZE), path)
    return path, run, result, evaluator


def test_bundle_is_weights_only_and_round_trips_to_recalibrated_outputs(bundle_path):
    path, _, result, evaluator = bundle_path
    data = torch.load(path, weights_only=True)
    assert data["format"] == "pssnet-adaptive/1"
    adaptive = AdaptiveNet.load(path)
    kept = {c.subnet for _, c in result.retained()}
    assert {r.subnet for r in adaptive.subnets} == kept
    x = torch.randn(5, 1, IMAGE_SIZE, IMAGE_SIZE)
    for retained in adaptive.subnets:
        adaptive.switch_to(retained)
        evaluator.activate(retained.subnet)  # the supernet subnet after recalibration
        evaluator.net.eval()
        with torch.no_grad():
            torch.testing.assert_close(adaptive(x), evaluator.net(x), rtol=0, atol=0)
        assert not adaptive.net.training


def test_fit_budget_respects_every_budget_and_picks_the_most_accurate(bundle_path):
    adaptive = AdaptiveNet.load(bundle_path[0])
    flops = sorted(r.resources["flops"] for r in adaptive.subnets)
    params = sorted(r.resources["params"] for r in adaptive.subnets)
    grid_f = [flops[0], *[(a + b) / 2 for a, b in zip(flops, flops[1:])], flops[-1] + 1]
    grid_p = [params[-1] + 1, params[len(params) // 2]]
    for f in grid_f:  # one budget: the bisection path
        fits = [r for r in adaptive.subnets if r.resources["flops"] <= f]
        chosen = adaptive.fit_budget(flops=f)
        assert chosen in fits and chosen.holdout_acc == max(r.holdout_acc for r in fits)
    with pytest.raises(UserError, match="below the smallest"):
        adaptive.fit_budget(flops=flops[0] - 1e-3)
    for f, p in itertools.product(grid_f, grid_p):
        fits = [r for r in adaptive.subnets if r.resources["flops"] <= f and r.resources["params"] <= p]
        if not fits:
            with pytest.raises(UserError):
                adaptive.fit_budget(flops=f, params=p)
            continue
        chosen = adaptive.fit_budget(flops=f, params=p)
        assert chosen in fits and adaptive.current is chosen
        assert chosen.holdout_acc == max(r.holdout_acc for r in fits)
        assert adaptive.net.active_subnet == chosen.subnet and adaptive.net.state.bn_slot == chosen.slot


def test_selection_ranks_by_holdout_accuracy_on_handmade_entries():
    net = tiny_supernet()
    sp = net.space
    subnets = [sp.smallest(), pssnet.Subnet(16, (0.9,) * sp.num_stages), sp.largest()]
    accs = [50.0, 70.0, 60.0]
    entries = [RetainedSubnet(s, ("x",), {"flops": pssnet.count_flops(net, s), "params": 1.0}, a, a - 1, i)
               for i, (s, a) in enumerate(zip(subnets, accs))]
    stats = {name: {"mean": torch.zeros(3, bn.num_features), "var": torch.ones(3, bn.num_features)}
             for name, bn in net.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)}
    adaptive = AdaptiveNet(net, entries, stats)
    assert adaptive.fit_budget(flops=1e9).subnet == subnets[1]  # most accurate, not largest
    assert adaptive.fit_budget(flops=entries[0].resources["flops"]).subnet == subnets[0]
    with pytest.raises(UserError, match=r"below the smallest retained subnet .*at least"):
        adaptive.fit_budget(flops=entries[0].resources["flops"] - 0.01)


def test_bad_budgets_are_clear_errors(bundle_path):
    adaptive = AdaptiveNet.load(bundle_path[0])
    with pytest.raises(UserError, match="no latency_cpu values"):
        adaptive.fit_budget(latency_cpu=5)
    with pytest.raises(UserError, match="unknown budget type 'macs'"):
        adaptive.fit_budget(macs=5)
    with pytest.raises(UserError, match="not a finite number"):
        adaptive.fit_budget(flops=float("nan"))
    with pytest.raises(UserError, match="at least one budget"):
        adaptive.fit_budget()


def test_missing_and_invalid_bundles_are_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist; write one with pssnet eval"):
        AdaptiveNet.load(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_text("not a bundle")
    with pytest.raises(UserError, match="cannot read deployment bundle"):
        AdaptiveNet.load(junk)
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="is not a deployment bundle"):
        AdaptiveNet.load(tmp_path / "other.pt")


@pytest.mark.slow
def test_export_matches_switched_supernet_and_all_formats_match_pytorch(bundle_path, tmp_path):
    adaptive = AdaptiveNet.load(bundle_path[0])
    x = torch.randn(3, 1, IMAGE_SIZE, IMAGE_SIZE)
    target = sorted(adaptive.subnets, key=lambda r: r.resources["flops"])[1]
    before = adaptive.current
    static = adaptive.export(target)
    assert adaptive.current is before and adaptive.net.state.bn_slot == before.slot
    assert isinstance(static, pssnet.StaticSubnet)
    adaptive.switch_to(target)
    with torch.no_grad():
        want = adaptive(x)
        torch.testing.assert_close(static(x), want, rtol=0, atol=1e-6)
    meta = {"model_config": adaptive.info["model_config"], "subnet": target.subnet.to_dict()}
    example = example_input(adaptive.info["model_config"], IMAGE_SIZE)
    for fmt in ("pt", "torchscript", "onnx"):
        path = tmp_path / f"model.{fmt}"
        export_static(static, path, fmt, example, meta)
        got = run_export(path, fmt, x)  # ONNX runs in onnxruntime, with a batch size unlike the example's
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    assert isinstance(load_static(tmp_path / "model.pt"), pssnet.StaticSubnet)


def test_trace_parsing_names_line_and_fix():
    events = parse_trace("# comment\n0.0 flops=20\n\n1.5 flops=10 params=1.2  # two budgets\n")
    assert [(e.time, dict(e.budgets)) for e in events] == [(0.0, {"flops": 20.0}),
                                                           (1.5, {"flops": 10.0, "params": 1.2})]
    for text, message in [("0 flops\n", "line 1: bad budget 'flops'"), ("0 flops=1\nabc flops=2\n", "line 2"),
                          ("1 flops=1\n0 flops=2\n", "sort the trace"), ("0.5\n", "no budget"),
                          ("# only comments\n", "no budget lines"), ("0 gpu=3\n", "unknown budget type")]:
        with pytest.raises(UserError, match=message):
            parse_trace(text)


def test_cli_export_adapt_and_errors(bundle_path, tmp_path, capsys):
    path = str(bundle_path[0])
    adaptive = AdaptiveNet.load(path)
    top = max(r.resources["flops"] for r in adaptive.subnets)
    low = min(r.resources["flops"] for r in adaptive.subnets)
    out = tmp_path / "m.onnx"
    assert main(["export", path, "--budget", f"flops={top}", "-o", str(out)]) == 0
    assert out.is_file() and "(onnx)" in capsys.readouterr().out

    trace = tmp_path / "trace.txt"
    trace.write_text(f"0 flops={top}\n0.5 flops={top}\n1 flops={low}\n")
    assert main(["adapt", path, "--trace", str(trace), "--batch", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4  # header line, column line, two changes (the repeat is not a change)

    cases = [
        ["export", str(tmp_path / "missing.pt"), "--budget", "flops=10", "-o", str(out)],
        ["export", path, "--budget", "flops=abc", "-o", str(out)],
        ["export", path, "--budget", f"flops={low / 2}", "-o", str(out)],
        ["adapt", path, "--trace", str(tmp_path / "missing.txt")],
    ]
    trace.write_text("0 flops=10\nx flops=3\n")
    cases.append(["adapt", path, "--trace", str(trace)])
    errors = []
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith(f"pssnet {argv[0]}: error: "), err
        errors.append(err)
    assert "does not exist" in errors[0] and "TYPE=NUMBER" in errors[1]
    assert f"at least {low:.4g}" in errors[2] and "line 2" in errors[4]


def test_switching_leaves_weights_untouched(bundle_path):
    adaptive = AdaptiveNet.load(bundle_path[0])
    before = {k: v.clone() for k, v in adaptive.net.state_dict().items()}
    for r in adaptive.subnets:
        adaptive.fit_budget(flops=r.resources["flops"])
        with torch.no_grad():
            adaptive(torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE))
    after = adaptive.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert np.isfinite([r.test_acc for r in adaptive.subnets]).all()


def _handmade_adaptive() -> AdaptiveNet:
    """Three retained subnets with distinct random stored statistics (so each slot matters)."""
    torch.manual_seed(0)
    net = tiny_supernet()
    sp = net.space
    subnets = [sp.smallest(), pssnet.Subnet(16, (0.9,) * sp.num_stages), sp.largest()]
    entries = [RetainedSubnet(s, ("x",), {"flops": pssnet.count_flops(net, s)}, 50.0 + i, 50.0, i)
               for i, s in enumerate(subnets)]
    stats = {name: {"mean": torch.randn(3, bn.num_features), "var": torch.rand(3, bn.num_features) + 0.5}
             for name, bn in net.named_modules() if isinstance(bn, torch.nn.BatchNorm2d)}
    return AdaptiveNet(net, entries, stats)


def test_stored_statistics_are_buffers_that_move_with_the_module_but_are_not_saved():
    adaptive = _handmade_adaptive()
    bns = [m for m in adaptive.modules() if isinstance(m, pssnet.ops.SlimBatchNorm2d)]
    fresh_keys = {f"net.{k}" for k in tiny_supernet().state_dict()}
    assert set(adaptive.state_dict()) == fresh_keys  # no bank entries: checkpoints are unchanged
    assert not any("bank" in k for k in adaptive.state_dict())
    assert all(bn.bank_mean.shape == (3, bn.num_features) for bn in bns)

    x = torch.randn(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        want = {r.slot: adaptive.export(r)(x) for r in adaptive.subnets}
    adaptive.to(torch.float64)
    assert all(bn.bank_mean.dtype == bn.bank_var.dtype == torch.float64 for bn in bns)
    for r in adaptive.subnets:  # each slot still reads its own (now float64) statistics
        adaptive.switch_to(r)
        with torch.no_grad():
            torch.testing.assert_close(adaptive(x.double()).float(), want[r.slot], rtol=1e-4, atol=1e-4)
    adaptive.half()
    assert all(bn.bank_mean.dtype == torch.float16 for bn in bns)
    adaptive.to("meta")
    assert all(bn.bank_mean.device.type == bn.bank_var.device.type == "meta" for bn in bns)


def test_switching_state_lives_on_the_shared_active_state():
    adaptive = _handmade_adaptive()
    for r in reversed(adaptive.subnets):
        adaptive.switch_to(r)
        state = adaptive.net.state
        assert adaptive.current is r and state.bn_slot == r.slot and state.subnet == r.subnet
        assert adaptive.net.active_subnet == r.subnet and state.resolution == r.subnet.resolution
        assert state.channels == adaptive.net.layout.group_channels(r.subnet.widths)
    assert not any(isinstance(v, torch.nn.Module) for v in vars(adaptive).values())  # no unregistered modules
