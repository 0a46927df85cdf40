import pytest
import torch
from torch import nn

import pssnet
from pssnet.calibration import recalibrate_bn
from pssnet.errors import UserError


def _batches(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 6, 6, generator=g) * 2 + 1, torch.zeros(size)) for _ in range(n)]


@pytest.mark.parametrize("start_training", [True, False])
def test_plain_bn_gets_cumulative_average_and_modes_are_restored(start_training):
    net = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3, momentum=0.3), nn.Dropout())
    net[1].running_mean.fill_(5.0)
    net.train(start_training)
    net[2].train(not start_training)  # mixed modes must come back exactly
    batches = _batches()
    recalibrate_bn(net, batches)

    with torch.no_grad():  # independent truth: mean of the per-batch mean / unbiased variance
        outs = [net[0](x) for x, _ in batches]
    want_mean = torch.stack([o.mean((0, 2, 3)) for o in outs]).mean(0)
    want_var = torch.stack([o.transpose(0, 1).reshape(3, -1).var(1, unbiased=True) for o in outs]).mean(0)
    torch.testing.assert_close(net[1].running_mean, want_mean)
    torch.testing.assert_close(net[1].running_var, want_var)
    assert net[1].momentum == 0.3
    assert net.training is start_training and net[1].training is start_training
    assert net[2].training is (not start_training)
    assert all(not p.requires_grad or p.grad is None for p in net.parameters())


def test_num_batches_limits_and_accepts_plain_tensors():
    net = nn.Sequential(nn.BatchNorm2d(3))
    xs = [x for x, _ in _batches(4)]
    recalibrate_bn(net, iter(xs), num_batches=1)
    torch.testing.assert_close(net[0].running_mean, xs[0].mean((0, 2, 3)))
    assert int(net[0].num_batches_tracked) == 1


def test_supernet_subnet_statistics_change_and_match_static_extraction():
    net = pssnet.create_supernet("mobilenet_v2", num_classes=4, in_chans=3, small_input=True, resolutions=(12, 16, 4))
    net.eval()
    s = net.space.smallest()
    net.set_subnet(s)
    before = {n: b.clone() for n, b in net.named_buffers() if n.endswith("running_mean")}
    recalibrate_bn(net, _batches())
    after = dict(net.named_buffers())
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) == len(before)  # every BN of the active subnet was re-estimated
    assert not net.training
    # The recalibrated statistics are the subnet's: a sliced static copy reproduces the outputs.
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pssnet.extract_subnet(net, s)(x), net(x))


def test_empty_loader_is_a_clear_error():
    with pytest.raises(UserError, match="no batches"):
        recalibrate_bn(nn.Sequential(nn.BatchNorm2d(3)), [])
