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


def test_forward_resizes_to_the_subnet_resolution():
    net = pssnet.create_supernet("mobilenet_v1", num_classes=3, in_chans=1, small_input=True).eval()
    subnet = Subnet(24, net.space.largest().widths)
    net.set_subnet(subnet)
    x = torch.randn(1, 1, 28, 28)
    resized = torch.nn.functional.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.equal(net(x), net(resized))


def test_set_subnet_validates_and_is_cheap():
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    with pytest.raises(ValueError, match="resolution 30"):
        net.set_subnet(Subnet(30, net.space.largest().widths))
    with pytest.raises(ValueError, match="stage 'stage3'"):
        net.set_subnet(Subnet(32, (1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0)))
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
