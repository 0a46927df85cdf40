"""Issue 18, item 1: the bundle as a Hugging Face Hub folder (config.json, model.safetensors, a
README.md model card). It round-trips bit for bit, holds and needs no pickle, refuses a tampered
folder in one line, loads through ``from_pretrained`` (a Hub repository is tested through a local
folder, which is what a downloaded snapshot is: nothing downloads here) and is accepted by
``serve``, ``adapt`` and ``export``."""

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from pssnet.cli import main
from pssnet.data.bundle import preprocessing_record
from pssnet.deploy import FOLDER_FORMAT, AdaptiveNet, load_folder, make_bundle, save_bundle, save_folder
from pssnet.errors import UserError
from pssnet.evaluation import EvalConfig, evaluate_run
from test_deploy_fixtures import IMAGE_SIZE, tiny_data, tiny_run

CONFIG = EvalConfig(top_k=2, calib_batches=2, holdout=40, batch_size=16, progress=False)
FILES = ["README.md", "config.json", "model.safetensors", "pareto.png"]
COMMAND = "pssnet train --arch mobilenet_v2 --data fashion-mnist-mini --constraint flops:5:11:2 --out runs/tiny"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny run's evaluated bundle as adaptive.pt and as a folder (with a plot), and its evaluator."""
    root = tmp_path_factory.mktemp("hub")
    run = tiny_run(data="fashion-mnist-mini")
    result, evaluator = evaluate_run(run, tiny_data(), CONFIG)
    prep = preprocessing_record(1, IMAGE_SIZE, [0.3], [0.35], ["a", "b", "c", "d"])
    bundle = make_bundle(run, result, evaluator.stats, IMAGE_SIZE, prep,
                         {"command": COMMAND, "data": "fashion-mnist-mini", "iterations": 0})
    save_bundle(bundle, root / "adaptive.pt")
    (root / "pareto.png").write_bytes(b"\x89PNG\r\n\x1a\n not a real plot")
    folder = save_folder(bundle, root / "adaptive", plot=root / "pareto.png")
    return root, folder, evaluator


def test_a_folder_round_trips_bit_identically_with_the_same_outputs_and_choices(made, tmp_path):
    root, folder, evaluator = made
    assert sorted(p.name for p in folder.iterdir()) == FILES
    adaptive = AdaptiveNet.load(folder)
    adaptive.save_pretrained(tmp_path / "again")
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (folder / name).read_bytes(), name
    from_pt = AdaptiveNet.load(root / "adaptive.pt")
    assert [r.key for r in adaptive.subnets] == [r.key for r in from_pt.subnets]
    assert [(r.labels, dict(r.resources), r.holdout_acc, r.test_acc) for r in adaptive.subnets] == \
        [(r.labels, dict(r.resources), r.holdout_acc, r.test_acc) for r in from_pt.subnets]
    x = torch.randn(5, 1, IMAGE_SIZE, IMAGE_SIZE)
    for retained in adaptive.subnets:
        adaptive.switch_to(retained)
        evaluator.activate(retained.subnet)  # the recalibrated supernet the bundle was made from
        evaluator.net.eval()
        with torch.no_grad():
            assert torch.equal(adaptive(x), evaluator.net(x))
    flops = sorted(r.resources["flops"] for r in adaptive.subnets)
    for budget in [flops[0], *[(a + b) / 2 for a, b in zip(flops, flops[1:])], flops[-1] * 2]:
        assert adaptive.select(flops=budget).key == from_pt.select(flops=budget).key
    assert adaptive.info == from_pt.info


def test_a_folder_from_adaptive_pt_equals_the_one_eval_writes(made, tmp_path, capsys):
    root, folder, _ = made
    assert main(["export", str(root / "adaptive.pt"), "--format", "hub", "-o", str(tmp_path / "hub")]) == 0
    assert "read back with max |difference| 0.0e+00" in capsys.readouterr().out
    for name in FILES:  # the plot next to adaptive.pt comes along
        assert (tmp_path / "hub" / name).read_bytes() == (folder / name).read_bytes(), name


def test_the_folder_holds_no_pickle_and_loading_unpickles_nothing(made, monkeypatch):
    _, folder, _ = made
    for path in folder.iterdir():
        head = path.read_bytes()[:2]
        assert head != b"PK" and head[:1] != b"\x80", path  # neither torch's zip nor a bare pickle

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    adaptive = AdaptiveNet.load(folder)
    assert len(adaptive.subnets) >= 2


def test_the_model_card_has_hub_metadata_the_pareto_table_and_usage(made):
    _, folder, _ = made
    card = (folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: pssnet" in front and "- pssnet" in front and "datasets:\n- fashion_mnist" in front
    config = json.loads((folder / "config.json").read_text())
    table = [line for line in body.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| kept for | subnet | MFLOPs | M params |") and len(table) == 1 + len(config["subnets"])
    for entry in config["subnets"]:
        assert any(f"{entry['resources']['flops']:.4g}" in row and ", ".join(entry["labels"]) in row for row in table)
    assert "](pareto.png)" in body and COMMAND in body and "`fashion-mnist-mini`" in body
    assert "AdaptiveNet.from_pretrained(" in body and "fit_budget(flops=" in body
    assert config["format"] == FOLDER_FORMAT and config["library_name"] == "pssnet"
    assert config["training"]["command"] == COMMAND and config["preprocessing"]["in_chans"] == 1


def _drop_tensor(folder: Path) -> None:
    import safetensors.torch as st

    tensors = st.load_file(folder / "model.safetensors")
    del tensors["supernet.features.0.body.0.conv.weight"]
    (folder / "model.safetensors").write_bytes(st.save(tensors, {"format": FOLDER_FORMAT}))


def _reshape_tensor(folder: Path) -> None:
    import safetensors.torch as st

    tensors = st.load_file(folder / "model.safetensors")
    tensors["subnets.1.features.0.body.0.bn.running_var"] = torch.ones(3)
    (folder / "model.safetensors").write_bytes(st.save(tensors, {"format": FOLDER_FORMAT}))


def _edit_config(key, value):
    def edit(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config[key] = value
        (folder / "config.json").write_text(json.dumps(config))
    return edit


TAMPERING = [
    (_drop_tensor, r"tensor 'supernet\.features\.0\.body\.0\.conv\.weight' of model\.safetensors is missing"),
    (_reshape_tensor, r"tensor 'subnets\.1\.features\.0\.body\.0\.bn\.running_var' of model\.safetensors has "
                      r"shape \[3\]; the model needs \[\d+\]"),
    (_edit_config("format", "pssnet-adaptive-folder/2"), r"has format 'pssnet-adaptive-folder/2', this pssnet "
                                                          r"reads pssnet-adaptive-folder/1: upgrade pssnet"),
    (_edit_config("format", "something-else"), r"format 'something-else' is not pssnet-adaptive-folder/1"),
    (_edit_config("subnets", []), r"field 'subnets' must be a list of the kept subnets, got an empty one"),
    (_edit_config("subnets", [{}] * 10**6), r"tensor 'subnets\.\d+\..*' of model\.safetensors is missing"),
    (lambda f: (f / "config.json").write_text("[" * 100_000), r"cannot read .*config\.json \(RecursionError"),
    (lambda f: (f / "config.json").unlink(), r"has no config\.json: it is not a pssnet adaptive folder, or writing "
                                             r"it was interrupted"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\x00" * 64), r"model\.safetensors is unreadable"),
    (lambda f: (f / "model.safetensors").unlink(), r"model\.safetensors is missing"),
]


@pytest.mark.parametrize("tamper, message", TAMPERING, ids=[str(i) for i in range(len(TAMPERING))])
def test_a_tampered_folder_is_refused_in_one_line(tamper, message, made, tmp_path):
    folder = tmp_path / "adaptive"
    shutil.copytree(made[1], folder)
    tamper(folder)
    with pytest.raises(UserError, match=message) as info:
        AdaptiveNet.load(folder)
    assert "\n" not in str(info.value) and str(folder) in str(info.value)


def test_from_pretrained_reads_a_local_folder_and_resolves_a_repo_id_through_snapshot_download(made, monkeypatch):
    import huggingface_hub

    root, folder, _ = made
    assert [r.key for r in AdaptiveNet.from_pretrained(folder).subnets] == \
        [r.key for r in AdaptiveNet.from_pretrained(str(root / "adaptive.pt")).subnets]
    calls = []

    def snapshot(**kwargs):  # what a download leaves: a local folder
        calls.append(kwargs)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    net = AdaptiveNet.from_pretrained("someone/pssnet-tiny", revision="v1", token="t")
    assert len(net.subnets) == len(AdaptiveNet.load(folder).subnets)
    assert calls[0]["repo_id"] == "someone/pssnet-tiny" and calls[0]["revision"] == "v1" and calls[0]["token"] == "t"
    assert set(calls[0]["allow_patterns"]) == set(FILES)

    def offline(**kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(UserError, match=r"'someone/x' is no local folder or file, and it could not be fetched .*"
                                        r"LocalEntryNotFoundError"):
        AdaptiveNet.from_pretrained("someone/x")
    with pytest.raises(UserError, match=r"runs/typo/adaptive does not exist; give a folder or adaptive\.pt"):
        AdaptiveNet.from_pretrained("runs/typo/adaptive")  # a path, never sent to the Hub


def test_push_to_hub_uploads_the_saved_folder_in_one_commit(made, monkeypatch):
    import huggingface_hub

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, private=None, exist_ok=False):
            uploaded["created"] = (repo_id, private, exist_ok)
            return type("Repo", (), {"repo_id": f"user/{repo_id}"})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploaded["repo_id"] = repo_id
            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["kwargs"] = kwargs
            return f"https://example.invalid/{repo_id}/commit/1"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    net = AdaptiveNet.load(made[1])
    url = net.push_to_hub("tiny", private=True, token="secret", commit_message="first")
    assert url.endswith("user/tiny/commit/1") and uploaded["created"] == ("tiny", True, True)
    assert uploaded["files"] == FILES and uploaded["kwargs"]["commit_message"] == "first"


def test_serve_adapt_and_export_accept_a_folder(made, tmp_path, capsys):
    from pssnet.serving.config import ServeConfig, SloConfig
    from pssnet.serving.service import ServingService

    _, folder, _ = made
    assert main(["adapt", str(folder), "--list"]) == 0
    assert "retained subnets" in capsys.readouterr().out
    adaptive = AdaptiveNet.load(folder)
    budget = max(r.resources["flops"] for r in adaptive.subnets)
    assert main(["export", str(folder), "--budget", f"flops={budget}", "-o", str(tmp_path / "m.pt")]) == 0
    assert "max |output - PyTorch|" in capsys.readouterr().out
    service = ServingService(ServeConfig(bundle=str(folder), slo=SloConfig(target_ms=50)))
    assert service.preprocessing.mean == (0.3,) and len(service.adaptive.subnets) == len(adaptive.subnets)


def test_a_folder_is_written_only_where_it_replaces_nothing_else(made, tmp_path, capsys):
    root = made[0]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["export", str(root / "adaptive.pt"), "--format", "hub", "-o", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err.strip()
    assert "already holds other files (notes.txt); choose a new or empty directory" in err and "\n" not in err
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    clone = tmp_path / "clone"  # a fresh clone of a Hub repository: its .git entries are no obstacle
    (clone / ".git").mkdir(parents=True)
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert main(["export", str(root / "adaptive.pt"), "--format", "hub", "-o", str(clone)]) == 0
    assert (clone / ".gitattributes").is_file() and len(load_folder(clone)["subnets"]) >= 2


@pytest.mark.slow
def test_without_the_hub_extra_folders_are_one_line_naming_it(made):
    from test_extras import _run_without

    code = f"""from pssnet.deploy import AdaptiveNet
from pssnet.errors import UserError
try:
    AdaptiveNet.load({str(made[1])!r})
except UserError as exc:
    print(exc)
print(len(AdaptiveNet.load({str(made[0] / "adaptive.pt")!r}).subnets))
"""
    done = _run_without(["safetensors", "huggingface_hub"], code)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "Hub folders (config.json + model.safetensors) need safetensors: pip install 'pssnet[hub]'"
    assert int(lines[1]) >= 2  # adaptive.pt needs no extra


def _run_dir(tmp_path: Path) -> Path:
    """A finished run as pssnet train leaves it: final.pt and config.json."""
    from pssnet.training.config import TrainConfig

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    torch.save(tiny_run(num_classes=10, data="fashion-mnist-mini").to_dict(), run_dir / "final.pt")
    settings = TrainConfig(out=str(run_dir), arch="mobilenet_v2", data="fashion-mnist-mini",
                           constraints=["flops:5:11:2"], resolutions=[12, 20, 4], max_iters=3)
    (run_dir / "config.json").write_text(json.dumps(settings.to_dict()))
    return run_dir


EVAL_FLAGS = ["--top-k", "2", "--calib-batches", "1", "--holdout", "32", "--batch-size", "100"]


@pytest.mark.slow
def test_eval_writes_the_folder_next_to_adaptive_pt_with_the_plot_and_the_training_command(tmp_path, capsys):
    run_dir = _run_dir(tmp_path)
    assert main(["eval", str(run_dir), *EVAL_FLAGS]) == 0
    assert str(run_dir / "adaptive") in capsys.readouterr().out
    folder = run_dir / "adaptive"
    assert sorted(p.name for p in folder.iterdir()) == FILES
    assert (folder / "pareto.png").read_bytes() == (run_dir / "pareto.png").read_bytes()
    card = (folder / "README.md").read_text()
    assert (f"pssnet train --arch mobilenet_v2 --data fashion-mnist-mini --out {run_dir} --constraint flops:5:11:2 "
            "--max-iters 3 --resolutions 12:20:4") in card
    from_pt, from_folder = AdaptiveNet.load(run_dir / "adaptive.pt"), AdaptiveNet.load(folder)
    assert [r.key for r in from_pt.subnets] == [r.key for r in from_folder.subnets]
    assert from_folder.info["training"]["command"] in card and from_folder.info["preprocessing"]["image_size"] == 28


@pytest.mark.slow
def test_eval_without_the_hub_extra_writes_adaptive_pt_and_says_so_in_one_note(tmp_path):
    from test_extras import _run_without

    run_dir = _run_dir(tmp_path)
    argv = ["eval", str(run_dir), *EVAL_FLAGS]
    code = f"import torch\ntorch.set_num_threads(1)\nfrom pssnet.cli import main\nsys.exit(main({argv!r}))"
    done = _run_without(["safetensors"], code)
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if "safetensors" in line] == [
        f"note: safetensors is not installed, so no {run_dir / 'adaptive'}/ Hub folder was written (adaptive.pt "
        "was); pip install 'pssnet[hub]' for one"]
    assert (run_dir / "adaptive.pt").is_file() and not (run_dir / "adaptive").exists()
