"""Pretrained initialisation from torchvision-format state dicts (random weights saved to disk)."""

import urllib.error

import pytest
import torch
import torchvision

import pssnet
from pssnet.errors import UserError
from pssnet.pretrained import load_pretrained


def _randomize_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so that a BN tensor loaded in the wrong place shows."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _saved_torchvision(arch: str, tmp_path, **kwargs) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(**kwargs).eval()
    _randomize_bn(model)
    path = tmp_path / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    return model, str(path)


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet50"])
def test_largest_subnet_gives_the_torchvision_models_outputs(arch, tmp_path):
    reference, path = _saved_torchvision(arch, tmp_path)
    net = pssnet.create_supernet(arch, num_classes=1000, in_chans=3)
    report = load_pretrained(net, path)
    assert len(report.loaded) == len(net.state_dict())
    assert not report.reinitialised and not report.adapted and not report.ignored
    net.eval().set_subnet(net.space.largest())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (net(x) - reference(x)).abs().max().item() <= 1e-4


@pytest.mark.parametrize("arch", ["mobilenet_v2", "resnet50"])
def test_another_class_count_reinitialises_only_the_classifier(arch, tmp_path):
    reference, path = _saved_torchvision(arch, tmp_path)
    net = pssnet.create_supernet(arch, num_classes=10, in_chans=3)
    report = load_pretrained(net, path)
    assert set(report.reinitialised) == {"classifier.1.weight", "classifier.1.bias"}
    assert "10 classes here, 1000 in the weights" in report.reinitialised["classifier.1.weight"]
    assert set(report.loaded) == set(net.state_dict()) - set(report.reinitialised)
    assert "re-initialised classifier.1.weight" in report.summary()
    # Everything before the classifier is torchvision's: the pooled features agree.
    net.eval().set_subnet(net.space.largest())
    x = torch.randn(1, 3, 224, 224)
    trunk = reference.features if arch == "mobilenet_v2" else torch.nn.Sequential(*list(reference.children())[:-2])
    with torch.no_grad():
        ours = torch.nn.functional.adaptive_avg_pool2d(net.features(x), 1)
        theirs = torch.nn.functional.adaptive_avg_pool2d(trunk(x), 1)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_grey_input_sums_the_rgb_stem(tmp_path):
    reference, path = _saved_torchvision("mobilenet_v2", tmp_path)
    net = pssnet.create_supernet("mobilenet_v2", num_classes=1000, in_chans=1)
    report = load_pretrained(net, path)
    assert list(report.adapted) == ["features.0.body.0.conv.weight"] and not report.reinitialised
    net.eval().set_subnet(net.space.largest())
    grey = torch.randn(1, 1, 224, 224)
    with torch.no_grad():  # a grey image is the RGB image with three equal channels
        assert (net(grey) - reference(grey.expand(-1, 3, -1, -1))).abs().max().item() <= 1e-4


def test_other_input_channels_and_small_input_stem_are_reinitialised(tmp_path):
    _, path = _saved_torchvision("resnet50", tmp_path)
    report = load_pretrained(pssnet.create_supernet("resnet50", num_classes=1000, in_chans=2), path)
    assert report.reinitialised == {"features.0.body.0.conv.weight": "2 input channels here, 3 in the weights"}
    report = load_pretrained(pssnet.create_supernet("resnet50", num_classes=1000, small_input=True), path)
    assert "3x3 stem here" in report.reinitialised["features.0.body.0.conv.weight"]


def test_mobilenet_v1_has_no_pretrained_weights(tmp_path):
    _, path = _saved_torchvision("mobilenet_v2", tmp_path)
    for source in ("torchvision", path):
        with pytest.raises(UserError, match="mobilenet_v1 has no torchvision model"):
            load_pretrained(pssnet.create_supernet("mobilenet_v1"), source)


def test_wrong_shapes_name_the_key(tmp_path):
    model, _ = _saved_torchvision("mobilenet_v2", tmp_path)
    state = model.state_dict()
    state["features.3.conv.1.0.weight"] = torch.zeros(100, 1, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(UserError, match=r"'features\.3\.conv\.1\.0\.weight' has shape \(100, 1, 3, 3\)"):
        load_pretrained(pssnet.create_supernet("mobilenet_v2"), str(path))
    # A wider space's largest subnet does not fit the weights either.
    _, path = _saved_torchvision("mobilenet_v2", tmp_path)
    with pytest.raises(UserError, match="has shape"):
        load_pretrained(pssnet.create_supernet("mobilenet_v2", width_range=(0.75, 1.25)), path)


def test_unusable_files_are_user_errors(tmp_path):
    net = pssnet.create_supernet("resnet50", num_classes=10)
    with pytest.raises(UserError, match="no such file"):
        load_pretrained(net, str(tmp_path / "missing.pth"))
    _, path = _saved_torchvision("mobilenet_v2", tmp_path)
    with pytest.raises(UserError, match="has no 'conv1.weight'.*not a torchvision resnet50"):
        load_pretrained(net, path)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read"):
        load_pretrained(net, str(garbage))


def test_failed_download_says_how_to_pass_a_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="download .* and pass --init PATH"):
        load_pretrained(pssnet.create_supernet("resnet50"), "torchvision")


def test_trainer_starts_a_fresh_run_from_the_weights(tmp_path, capsys):
    from pssnet.training import RecipeConfig, SamplerConfig, TrainConfig, Trainer, load_run

    reference, path = _saved_torchvision("mobilenet_v2", tmp_path)
    config = TrainConfig(arch="mobilenet_v2", data="fashion-mnist-mini", out=str(tmp_path / "run"),
                         constraints=["flops:6:14:4"], resolutions=[16, 24, 8], batch_size=4, max_iters=1,
                         threads=1, progress=False, init=path, recipe=RecipeConfig(lr=0.0),
                         sampler=SamplerConfig(map_samples=2000, map_cache=str(tmp_path / "maps"), pool_size=2))
    Trainer(config).run()
    printed = capsys.readouterr().out
    assert "init from" in printed and "adapted features.0.body.0.conv.weight" in printed
    assert "re-initialised classifier.1.weight: 10 classes here, 1000 in the weights" in printed
    state = load_run(tmp_path / "run").state_dict  # lr 0: the step left the weights as loaded
    assert torch.equal(state["features.5.body.1.conv.weight"], reference.state_dict()["features.5.conv.1.0.weight"])
    assert torch.equal(state["features.0.body.0.conv.weight"],
                       reference.state_dict()["features.0.0.weight"].sum(1, keepdim=True))
