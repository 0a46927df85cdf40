import json
import random

import pytest
import torch
import torchvision

import pssnet
from pssnet import Subnet
from pssnet.ops import SlimBatchNorm2d, SlimConv2d, SlimLinear
from pssnet.pretrained import torchvision_names

ARCHS = sorted(pssnet.ARCHITECTURES)


def _randomize_bn(net: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def _as_torchvision(net: pssnet.Supernet, static: torch.nn.Module) -> dict:
    """The static subnet's state dict under torchvision's names (the mapping --init uses)."""
    names = torchvision_names(net)
    return {names[key]: value for key, value in static.state_dict().items()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("small_input", [True, False])
def test_extracted_subnet_matches_supernet(arch, small_input):
    torch.manual_seed(0)
    net = pssnet.create_supernet(arch, num_classes=7, in_chans=2, small_input=small_input)
    _randomize_bn(net)
    net.eval()
    rng = random.Random(1)
    for subnet in [net.space.smallest(), net.space.sample(rng)]:
        static = pssnet.extract_subnet(net, subnet).eval()
        assert not any(isinstance(m, (SlimConv2d, SlimBatchNorm2d, SlimLinear)) for m in static.modules())
        x = torch.randn(2, 2, subnet.resolution + 3, subnet.resolution + 3)
        net.set_subnet(subnet)
        with torch.no_grad():
            expected, got = net(x), static(x)
        assert got.shape == (2, 7)
        assert (expected - got).abs().max().item() <= 1e-5


def test_training_step_through_slices_equals_static_model():
    torch.manual_seed(0)
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    net.classifier[0].p = 0.0
    subnet = net.space.sample(random.Random(3))
    static = pssnet.extract_subnet(net, subnet).train()
    net.set_subnet(subnet)
    net.train()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(net(x), y).backward()
    torch.nn.functional.cross_entropy(static(x), y).backward()
    first_super = net.features[0].body[0].conv.weight.grad
    first_static = static.features[0].body[0].conv.weight.grad
    c = first_static.shape[0]
    assert torch.allclose(first_super[:c], first_static, atol=1e-6)
    assert first_super[c:].abs().sum() == 0  # channels outside the subnet get no gradient
    head_super, head_static = net.classifier[1].weight.grad, static.classifier[1].weight.grad
    assert torch.allclose(head_super[:, : head_static.shape[1]], head_static, atol=1e-6)


# The registered architectures whose largest subnet is a torchvision model: (torchvision
# constructor, its parameter count, output tolerance).
TORCHVISION_TWINS = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, 3_504_872, 1e-5),
    "resnet50": (torchvision.models.resnet50, 25_557_032, 1e-4),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_TWINS))
def test_largest_subnet_is_torchvisions(arch):
    make_reference, num_params, tolerance = TORCHVISION_TWINS[arch]
    torch.manual_seed(0)
    net = pssnet.create_supernet(arch)
    _randomize_bn(net)
    largest = Subnet(224, net.space.largest().widths)
    static = pssnet.extract_subnet(net, largest).eval()
    reference = make_reference().eval()
    assert sum(p.numel() for p in reference.parameters()) == num_params == pssnet.count_params(net, largest)
    reference.load_state_dict(_as_torchvision(net, static))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (reference(x) - static(x)).abs().max().item() <= tolerance


def test_mobilenet_v2_keeps_its_final_conv_at_1280_channels_as_the_paper():
    # The reference's last conv is a plain USConv2d(320, 1280): 8 searchable widths, and the
    # smallest subnet at 128 px counts the paper's 69 MFLOPs (the reference's counter adds the
    # average pool, 4 x 4 x 1280 = 0.02 M more). It is torchvision's mobilenet_v2(width_mult=0.75),
    # whose last_channel stays 1280 below width 1.0.
    torch.manual_seed(0)
    net = pssnet.create_supernet("mobilenet_v2")
    assert net.space.num_stages == 8 and "head" not in net.space.stage_names
    smallest = net.space.smallest()
    pool_macs = 4 * 4 * 1280
    assert abs(pssnet.count_flops(net, smallest) + pool_macs / 1e6 - 69.2) <= 0.1
    _randomize_bn(net)
    narrow = Subnet(224, smallest.widths)
    static = pssnet.extract_subnet(net, narrow).eval()
    assert static.features[-1].body[0].conv.out_channels == static.classifier[1].in_features == 1280
    reference = torchvision.models.mobilenet_v2(width_mult=0.75).eval()
    assert sum(p.numel() for p in reference.parameters()) == pssnet.count_params(net, narrow)
    reference.load_state_dict(_as_torchvision(net, static))
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (reference(x) - static(x)).abs().max().item() <= 1e-5


def test_pssnet_info_shows_8_widths_and_the_papers_smallest_mobilenet_v2(capsys):
    from pssnet.cli import main

    assert main(["info", "--arch", "mobilenet_v2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("mobilenet_v2: 8 width multipliers") and "head" not in text
    assert main(["info", "--arch", "mobilenet_v2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info["channel_choices"]) == ["stem"] + [f"stage{i}" for i in range(1, 8)]
    assert info["smallest"]["subnet"]["resolution"] == 128 and abs(info["smallest"]["flops_m"] - 69.2) <= 0.1
    assert info["largest"]["params"] == 3_504_872 and info["largest"]["flops_m"] == pytest.approx(300.77, abs=0.01)


def test_mobilenet_v1_uses_relu6_everywhere():
    net = pssnet.create_supernet("mobilenet_v1")
    acts = [m for m in net.features.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    assert len(acts) == 1 + 2 * 13 and all(isinstance(m, torch.nn.ReLU6) for m in acts)


@pytest.mark.parametrize("arch", ARCHS)
def test_initialisation_is_the_references(arch):
    # reset_parameters of the reference's models: conv N(0, sqrt(2 / (k * k * out))), BN weight 1
    # and bias 0, classifier N(0, 0.01) with bias 0.
    torch.manual_seed(0)
    net = pssnet.create_supernet(arch)
    linear = net.classifier[1]
    assert torch.count_nonzero(linear.bias) == 0
    assert abs(linear.weight.std().item() - 0.01) < 0.0005 and abs(linear.weight.mean().item()) < 0.0005
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 20_000:
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            assert abs(m.weight.std().item() / (2 / n) ** 0.5 - 1) < 0.05
        elif isinstance(m, torch.nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("arch, retired", [("mobilenet_v2", "older 9-width MobileNetV2 space"),
                                           ("mobilenet_v1", "ReLU activations")])
def test_a_model_config_of_a_retired_layout_is_refused_in_one_line(arch, retired):
    stored = pssnet.create_supernet(arch, num_classes=10, in_chans=1, small_input=True).config.to_dict()
    assert stored["layout_version"] == 2
    del stored["layout_version"]  # written before layout versions: version 1
    for data in (stored, {**stored, "layout_version": 1}):
        with pytest.raises(pssnet.errors.UserError, match=retired) as info:
            pssnet.SupernetConfig.from_dict(data)
        assert "\\n" not in str(info.value) and "train it again" in str(info.value)
    with pytest.raises(pssnet.errors.UserError, match="layout_version"):
        pssnet.SupernetConfig.from_dict({**stored, "layout_version": 3})
    resnet = pssnet.create_supernet("resnet50", num_classes=10, small_input=True).config.to_dict()
    del resnet["layout_version"]  # ResNet-50's layout is unchanged: version 1 is current
    assert pssnet.SupernetConfig.from_dict(resnet).layout_version == 1


def test_forward_resizes_to_the_subnet_resolution_as_the_reference():
    # Bilinear with align_corners=True (the reference's models/*.py); training-mode BN keeps the
    # logits away from zero, so that another resize would show.
    net = pssnet.create_supernet("mobilenet_v1", num_classes=3, in_chans=1, small_input=True).train()
    subnet = Subnet(24, net.space.largest().widths)
    net.set_subnet(subnet)
    x = torch.randn(4, 1, 28, 28)
    resize = torch.nn.functional.interpolate
    with torch.no_grad():
        out = net(x)
        assert torch.equal(out, net(resize(x, size=(24, 24), mode="bilinear", align_corners=True)))
        assert not torch.allclose(out, net(resize(x, size=(24, 24), mode="bilinear", align_corners=False)))
        assert torch.equal(pssnet.extract_subnet(net, subnet)(x), out)


def test_set_subnet_validates_and_is_cheap():
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    with pytest.raises(ValueError, match="resolution 30"):
        net.set_subnet(Subnet(30, net.space.largest().widths))
    with pytest.raises(ValueError, match="stage 'stage3'"):
        net.set_subnet(Subnet(32, (1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0, 1.0)))
    s = net.space.sample(random.Random(0))
    net.set_subnet(s)
    assert net.active_subnet == s and net.state.resolution == s.resolution
    assert net.state.channels == net.layout.group_channels(s.widths)
    # Extraction leaves the active subnet alone.
    pssnet.extract_subnet(net, net.space.smallest())
    assert net.active_subnet == s


def test_any_classes_and_input_channels():
    net = pssnet.create_supernet("resnet50", num_classes=3, in_chans=5, small_input=True).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 5, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="positive"):
        pssnet.create_supernet("resnet50", num_classes=0)


@pytest.mark.parametrize("arch", sorted(pssnet.architectures.ARCHITECTURES))
def test_slim_convs_are_conv2d_with_max_widths_and_depthwise_groups(arch):
    net = pssnet.create_supernet(arch, num_classes=10, small_input=True)
    units = [m for m in net.modules() if isinstance(m, pssnet.supernet.ConvBNAct)]
    assert units
    for unit in units:
        conv, spec = unit.conv, unit.spec
        assert isinstance(conv, torch.nn.Conv2d) and conv.bias is None and conv.depthwise == spec.depthwise
        assert conv.kernel_size == (spec.kernel, spec.kernel)
        assert (conv.in_channels, conv.out_channels) == (unit.bn.num_features if spec.depthwise else
                                                         spec.in_width.resolve(net.state.channels),
                                                         unit.bn.num_features)
        assert conv.weight.shape == (conv.out_channels, 1 if spec.depthwise else conv.in_channels,
                                     spec.kernel, spec.kernel)
        assert conv.groups == (conv.in_channels if spec.depthwise else 1)


# ---------------------------------------------------------------- SupernetConfig: model_config on disk

def test_supernet_config_gives_the_stored_model_config_unchanged():
    # The dict checkpoints and bundles have always stored (resolved resolutions, lists, plain types).
    net = pssnet.create_supernet("mobilenet_v1", 5, 2, False, (16, 24.0, 8), (1, 1.25), 0.3)
    stored = {"arch": "mobilenet_v1", "num_classes": 5, "in_chans": 2, "small_input": False,
              "resolutions": [16, 24, 8], "width_range": [1.0, 1.25], "dropout": 0.3, "layout_version": 2}
    assert net.config.to_dict() == stored
    assert [type(v) for v in net.config.to_dict().values()] == [type(v) for v in stored.values()]
    assert pssnet.SupernetConfig.from_dict(stored) == net.config
    assert pssnet.create_supernet(**stored).config == net.config
    small = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True).config
    assert small.resolutions == (24, 32, 4) and small == pssnet.SupernetConfig.from_dict(small.to_dict())


def test_supernet_config_builds_the_supernet_and_is_frozen():
    config = pssnet.SupernetConfig("resnet50", num_classes=10, small_input=True)
    net = pssnet.Supernet(config)
    assert net.config is config and net.layout == config.layout() and net.space == config.space()
    assert net.layout.num_classes == 10 and net.space.resolutions[0] == 24
    with pytest.raises(AttributeError):
        config.num_classes = 3


@pytest.mark.parametrize("change, message", [
    ({"depth": 3}, "unknown field.*'depth'"),
    ({"arch": None}, "lacks field.*arch"),
    ({"width_range": None, "resolutions": None}, "lacks field.*resolutions, width_range"),
])
def test_supernet_config_from_dict_refuses_unknown_and_missing_keys(change, message):
    stored = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True).config.to_dict()
    data = {k: v for k, v in {**stored, **change}.items() if v is not None}
    with pytest.raises(pssnet.errors.UserError, match=message) as info:
        pssnet.SupernetConfig.from_dict(data)
    assert "\n" not in str(info.value)


def test_a_model_config_written_before_dropout_loads_with_none():
    stored = pssnet.create_supernet("resnet50", num_classes=10, in_chans=1, small_input=True).config.to_dict()
    del stored["dropout"]
    assert pssnet.SupernetConfig.from_dict(stored).dropout == 0.0


def test_counts_and_canonical_forms_take_a_supernet_or_its_layout():
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    s = net.space.sample(random.Random(3))
    assert pssnet.count_flops(net, s) == pssnet.count_flops(net.layout, s) == pssnet.resources.count_flops(net.layout, s)
    assert pssnet.count_params(net, s) == pssnet.resources.count_params(net.layout, s)
    assert pssnet.canonicalize(net, s) == pssnet.layout.canonicalize(net.layout, s, net.space)
    with pytest.raises(TypeError, match="pass net.layout"):
        pssnet.resources.ResourceMeter(net)
