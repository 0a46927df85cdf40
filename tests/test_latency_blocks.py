"""Latency blocks built directly from their configuration equal the blocks of extracted subnets."""

from __future__ import annotations

import random

import pytest
import torch

import pssnet
from pssnet import create_supernet, extract_subnet
from pssnet.latency import build_module, subnet_keys
from pssnet.latency.blocks import part_config
from pssnet.latency.keys import block_input_sizes, layout_parts


def _param_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "resnet50" else a
                                  for a in sorted(pssnet.ARCHITECTURES)])
def test_directly_built_blocks_equal_the_extracted_subnets_blocks(arch):
    net = create_supernet(arch, num_classes=10, in_chans=1, small_input=True).eval()
    rng = random.Random(7)
    for subnet in [net.space.smallest(), net.space.sample(rng), net.space.sample(rng)]:
        static = extract_subnet(net, subnet).eval()
        channels = net.layout.group_channels(subnet.widths)
        sizes = block_input_sizes(net.layout, subnet.resolution)
        parts = layout_parts(net.layout)
        keys = subnet_keys(net.layout, subnet)
        extracted = list(static.features) + [static]
        for part, key, reference in zip(parts, keys, extracted):
            config = part_config(part, sizes[part.position], channels)
            assert config.key == key
            module = build_module(config)
            x = torch.randn(2, config.in_channels, config.size, config.size)
            if part.block is None:  # the classifier: pooled linear on the last feature map
                assert _param_count(module) == _param_count(static.classifier)
                module.classifier.load_state_dict(static.classifier.state_dict())
                want = static.classifier(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))
            else:
                assert _param_count(module) == _param_count(reference), (part.name, key)
                assert module.state_dict().keys() == reference.state_dict().keys()
                module.load_state_dict(reference.state_dict())
                want = reference(x)
            with torch.no_grad():
                got = module(x)
                want = want.detach()
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)
