import copy
import random

import pytest
import torch
import torch.nn.functional as F

from pssnet import ARCHITECTURES, create_supernet
from pssnet.ops import SlimConv2d
from pssnet.space import Subnet
from pssnet.training.step import SandwichStep, distill_loss
from pssnet.training.recipe import cosine_factor, weight_decay_groups


def _setup():
    torch.manual_seed(0)
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True, resolutions=(16, 24, 8))
    net.classifier[0].p = 0.0  # no dropout: forwards are deterministic, so scores compare exactly
    opt = torch.optim.SGD(weight_decay_groups(net, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    sampled = Subnet(16, (0.8, 0.9, 0.85, 0.95, 0.75, 1.0, 0.8, 0.77))
    return net, opt, images, labels, sampled


def test_metric_reuse_equals_extra_forward_score():
    net, opt, images, labels, sampled = _setup()
    net2, opt2 = copy.deepcopy(net), None
    opt2 = torch.optim.SGD(weight_decay_groups(net2, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    reuse = SandwichStep(net, net, opt)(images, labels, sampled)
    extra = SandwichStep(net2, net2, opt2, extra_forward_score=True)(images, labels, sampled)
    assert reuse.score == pytest.approx(extra.score, rel=1e-6, abs=1e-6)
    assert reuse.loss_largest == pytest.approx(extra.loss_largest, rel=1e-6)
    for p1, p2 in zip(net.parameters(), net2.parameters()):
        assert torch.allclose(p1, p2, atol=1e-6)


def test_step_losses_match_manual_computation():
    net, opt, images, labels, sampled = _setup()
    ref = copy.deepcopy(net)
    result = SandwichStep(net, net, opt, label_smoothing=0.1)(images, labels, sampled)
    with torch.no_grad():  # same weights, train-mode BN: the step's forwards before its update
        ref.set_subnet(ref.space.largest())
        teacher = ref(images)
        ref.set_subnet(sampled)
        student = ref(images)
        ref.set_subnet(ref.space.smallest())
        smallest = ref(images)
    assert result.loss_largest == pytest.approx(F.cross_entropy(teacher, labels, label_smoothing=0.1).item(), rel=1e-5)
    kl = (F.softmax(teacher, 1) * (F.log_softmax(teacher, 1) - F.log_softmax(student, 1))).sum(1).mean()
    assert result.loss_sampled == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
    assert result.loss_smallest == pytest.approx(distill_loss(smallest, teacher).item(), rel=1e-4, abs=1e-7)
    assert result.score == pytest.approx(-F.cross_entropy(student, labels).item(), rel=1e-5)
    assert result.acc_largest == pytest.approx((teacher.argmax(1) == labels).float().mean().item())
    changed = [not torch.equal(a, b) for a, b in zip(net.parameters(), ref.parameters())]
    assert all(changed)  # one optimizer step touched every parameter


def test_weight_decay_only_on_dense_conv_and_linear_weights():
    net, *_ = _setup()
    decay, rest = weight_decay_groups(net, 1e-4)
    decay_ids = {id(p) for p in decay["params"]}
    for module in net.modules():
        if isinstance(module, SlimConv2d):
            assert (id(module.weight) in decay_ids) == (not module.depthwise)
        elif isinstance(module, torch.nn.BatchNorm2d):
            assert id(module.weight) not in decay_ids and id(module.bias) not in decay_ids
    linear = net.classifier[1]
    assert id(linear.weight) in decay_ids and id(linear.bias) not in decay_ids
    assert rest["weight_decay"] == 0.0 and len(decay["params"]) + len(rest["params"]) == len(list(net.parameters()))


def test_cosine_schedule():
    assert cosine_factor(0, 100, 0) == 1.0
    assert cosine_factor(50, 100, 0) == pytest.approx(0.5)
    assert cosine_factor(100, 100, 0) == pytest.approx(0.0)
    assert cosine_factor(4, 100, 10) == pytest.approx(0.5)


def _reference_extra_forward_score(net, images, labels, sampled) -> float:
    """The reference's score (PSS-Net train.py): a no-grad forward of the sampled subnet in the
    training mode the step runs in (train-mode BN: batch statistics; the running statistics get
    one more momentum update), on the same batch and the same weights, before the optimizer step."""
    probe = copy.deepcopy(net).train()
    probe.set_subnet(sampled)
    with torch.no_grad():
        return -F.cross_entropy(probe(images), labels).item()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_reused_score_equals_the_references_extra_forward_for_every_architecture(arch):
    """With the default (no) dropout, the score SandwichStep takes from the sampled subnet's
    training forward equals the score of the reference's extra forward: a second no-grad forward
    of the same subnet, same batch, same weights, in train mode (BN normalises with the batch's
    statistics in both, so the extra forward's update of the running statistics does not enter
    the score; those buffers are recalibrated before evaluation anyway). Compared: the -CE score
    values. The same comparison with dropout 0.2 fails, since each forward draws its own mask."""
    torch.manual_seed(0)
    net = create_supernet(arch, num_classes=10, in_chans=3, small_input=True)
    assert net.classifier[0].p == 0.0 and net.config.dropout == 0.0
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    sampled = net.space.sample(random.Random(1))
    expected = _reference_extra_forward_score(net, images, labels, sampled)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    result = SandwichStep(net, net, opt)(images, labels, sampled)
    assert result.score == pytest.approx(expected, rel=1e-5, abs=1e-6)

    noisy = create_supernet(arch, num_classes=10, in_chans=3, small_input=True, dropout=0.2)
    noisy.load_state_dict(net.state_dict())
    noisy_expected = _reference_extra_forward_score(noisy, images, labels, sampled)
    noisy_result = SandwichStep(noisy, noisy, torch.optim.SGD(noisy.parameters(), lr=0.1))(images, labels, sampled)
    assert noisy_result.score != pytest.approx(noisy_expected, rel=1e-5, abs=1e-6)


def test_dropout_is_part_of_the_model_config():
    net = create_supernet("mobilenet_v1", num_classes=5, in_chans=1, small_input=True, dropout=0.3)
    assert net.classifier[0].p == 0.3 and net.config.dropout == 0.3
    again = create_supernet(**net.config.to_dict())
    assert again.classifier[0].p == 0.3 and again.config == net.config
    old = {k: v for k, v in net.config.to_dict().items() if k != "dropout"}  # model_configs written before the key
    assert create_supernet(**old).classifier[0].p == 0.0
