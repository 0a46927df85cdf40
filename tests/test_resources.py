import random

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pssnet
from pssnet import Subnet
from pssnet.space import subnets_from_arrays

ARCHS = sorted(pssnet.ARCHITECTURES)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("small_input", [True, False])
def test_vectorised_counts_equal_scalar_counts(arch, small_input):
    net = pssnet.create_supernet(arch, num_classes=10, small_input=small_input)
    res, widths = net.space.sample_arrays(2000, np.random.default_rng(0))
    flops, params = pssnet.count_arrays(net, res, widths)
    subnets = subnets_from_arrays(res, widths)
    assert flops.tolist() == [pssnet.count_flops(net, s) for s in subnets]
    assert params.tolist() == [pssnet.count_params(net, s) for s in subnets]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("small_input", [True, False])
def test_counts_equal_measured_counts_of_extracted_model(arch, small_input):
    net = pssnet.create_supernet(arch, num_classes=10, in_chans=3, small_input=small_input)
    rng = random.Random(2)
    for subnet in [net.space.smallest(), net.space.sample(rng), net.space.sample(rng)]:
        static = pssnet.extract_subnet(net, subnet).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            static(torch.randn(1, 3, subnet.resolution, subnet.resolution))
        assert counter.get_total_flops() == 2 * pssnet.count_macs(net, subnet)
        assert sum(p.numel() for p in static.parameters()) == pssnet.count_params(net, subnet)


@pytest.mark.parametrize("arch, macs_m, tolerance", [
    ("mobilenet_v1", 569, 1), ("mobilenet_v2", 300, 1), ("resnet50", 4100, 30),
])
def test_reference_imagenet_flops(arch, macs_m, tolerance):
    net = pssnet.create_supernet(arch)
    full = Subnet(224, net.space.largest().widths)
    assert abs(pssnet.count_flops(net, full) - macs_m) <= tolerance


@pytest.mark.parametrize("arch", ARCHS)
def test_every_multiplier_that_changes_channels_changes_flops_and_params(arch):
    net = pssnet.create_supernet(arch, num_classes=10)
    largest = net.space.largest()
    inert = []
    for stage, name in enumerate(net.space.stage_names):
        widths = list(largest.widths)
        widths[stage] = 0.75
        slimmer = Subnet(largest.resolution, tuple(widths))
        if net.layout.group_channels(slimmer.widths) == net.layout.group_channels(largest.widths):
            inert.append(name)
            continue
        assert pssnet.count_flops(net, slimmer) < pssnet.count_flops(net, largest), name
        assert pssnet.count_params(net, slimmer) < pssnet.count_params(net, largest), name
    # make_divisible(16 * w) == 16 and make_divisible(24 * w) == 24 for every w in [0.75, 1]
    # (the 10% rule rounds 18..20 up to 24): MobileNetV2's first two stages cannot get narrower
    # in the paper's space. Every other multiplier is live.
    assert inert == (["stage1", "stage2"] if arch == "mobilenet_v2" else [])


def test_resolution_changes_flops_not_params():
    net = pssnet.create_supernet("mobilenet_v2")
    big, small = net.space.largest(), Subnet(128, net.space.largest().widths)
    assert pssnet.count_flops(net, small) < pssnet.count_flops(net, big)
    assert pssnet.count_params(net, small) == pssnet.count_params(net, big)


def test_bad_width_array_shape():
    net = pssnet.create_supernet("mobilenet_v2")
    with pytest.raises(ValueError, match="shape"):
        pssnet.flops_array(net, np.array([224]), np.ones((1, 3)))
