"""Pretrained initialisation: torchvision-format weights loaded into a supernet's largest subnet.

The largest MobileNetV2 and ResNet-50 subnets (ImageNet layout, multiplier 1.0) are torchvision's
``mobilenet_v2`` and ``resnet50`` layer for layer, so their weights map by name
(:func:`torchvision_names`). Starting from them is how Once-for-All starts: train the full
network first, then shrink. MobileNetV1 has no torchvision model, hence no weights.

Layers whose shape the task changes are re-initialised and reported, never guessed:

- the classifier, when the number of classes differs;
- the first convolution, when its kernel differs (ResNet-50's small-input 3x3 stem) or when the
  input channels differ, except for 1-channel input from RGB weights: that stem gets the RGB
  filters summed over their input channels (as Once-for-All and timm do). A grey image ``g`` fed
  as ``(g, g, g)`` gives the pretrained stem exactly the summed filter's response to ``g``, so the
  pretrained features are kept instead of being thrown away with a random stem.

Any other difference in shape (another width range, another architecture's file) is a
:class:`~pssnet.errors.UserError` that names the key.
"""

from __future__ import annotations

import http.client
import pathlib
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from .architectures import RESNET50_STAGES
from .errors import UserError
from .fileio import load_weights_only
from .supernet import Supernet

# Architectures whose largest subnet is a torchvision model of this name.
TORCHVISION_MODELS = {"mobilenet_v2": "mobilenet_v2", "resnet50": "resnet50"}

_BN_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_STEM_CONV = "features.0.body.0.conv.weight"
_CLASSIFIER = ("classifier.1.weight", "classifier.1.bias")


@dataclass
class InitReport:
    """What :func:`load_pretrained` did with every tensor of the supernet's state dict."""

    source: str
    loaded: list[str] = field(default_factory=list)  # copied unchanged
    adapted: dict[str, str] = field(default_factory=dict)  # key -> how it was converted
    reinitialised: dict[str, str] = field(default_factory=dict)  # key -> why it was not loaded
    ignored: list[str] = field(default_factory=list)  # keys of the source nothing maps to

    def summary(self) -> str:
        """A few lines for the training log."""
        lines = [f"init from {self.source}: loaded {len(self.loaded)} tensors"]
        lines += [f"  adapted {key}: {how}" for key, how in self.adapted.items()]
        lines += [f"  re-initialised {key}: {why}" for key, why in self.reinitialised.items()]
        if self.ignored:
            lines.append(f"  ignored {len(self.ignored)} tensors of the source (e.g. {self.ignored[0]})")
        return "\n".join(lines)


def _conv_bn(ours: str, conv: str, bn: str) -> dict[str, str]:
    names = {f"{ours}.conv.weight": f"{conv}.weight"}
    names.update({f"{ours}.bn.{t}": f"{bn}.{t}" for t in _BN_TENSORS})
    return names


def _mobilenet_v2_names(net: Supernet) -> dict[str, str]:
    # torchvision: features.i is a Conv2dNormActivation (i.0 conv, i.1 bn) for the stem and the
    # head, an InvertedResidual otherwise: conv.j.{0,1} for all but the last (linear) conv, whose
    # conv and bn are conv.(n-1) and conv.n.
    names: dict[str, str] = {}
    for i, block in enumerate(net.layout.blocks):
        n = len(block.body)
        for j in range(n):
            ours = f"features.{i}.body.{j}"
            if block.kind == "conv":
                names.update(_conv_bn(ours, f"features.{i}.{j}", f"features.{i}.{j + 1}"))
            elif j < n - 1:
                names.update(_conv_bn(ours, f"features.{i}.conv.{j}.0", f"features.{i}.conv.{j}.1"))
            else:
                names.update(_conv_bn(ours, f"features.{i}.conv.{j}", f"features.{i}.conv.{j + 1}"))
    return {**names, "classifier.1.weight": "classifier.1.weight", "classifier.1.bias": "classifier.1.bias"}


def _resnet50_names(net: Supernet) -> dict[str, str]:
    names = _conv_bn("features.0.body.0", "conv1", "bn1")
    blocks = iter(range(1, len(net.layout.blocks)))
    for stage, (_, _, repeats, _) in enumerate(RESNET50_STAGES, start=1):
        for k in range(repeats):
            i, theirs = next(blocks), f"layer{stage}.{k}"
            for j in range(3):
                names.update(_conv_bn(f"features.{i}.body.{j}", f"{theirs}.conv{j + 1}", f"{theirs}.bn{j + 1}"))
            if net.layout.blocks[i].shortcut is not None:
                names.update(_conv_bn(f"features.{i}.shortcut", f"{theirs}.downsample.0", f"{theirs}.downsample.1"))
    return {**names, "classifier.1.weight": "fc.weight", "classifier.1.bias": "fc.bias"}


def torchvision_names(net: Supernet) -> dict[str, str]:
    """Supernet state-dict key -> torchvision state-dict key, for every tensor of ``net``.

    Also valid for the keys of :func:`~pssnet.extract_subnet`'s static models (same names).
    """
    arch = net.layout.name
    if arch not in TORCHVISION_MODELS:
        raise UserError(f"{arch} has no torchvision model, so no pretrained weights to start from; "
                        f"train it without --init (pretrained weights exist for {', '.join(TORCHVISION_MODELS)})")
    return _mobilenet_v2_names(net) if arch == "mobilenet_v2" else _resnet50_names(net)


def _download(arch: str) -> Mapping[str, torch.Tensor]:
    import torchvision

    weights = torchvision.models.get_model_weights(TORCHVISION_MODELS[arch]).DEFAULT
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False,
                                                  check_hash=True, weights_only=True)
    except (OSError, RuntimeError, http.client.HTTPException) as exc:  # no network, refused, corrupt
        raise UserError(f"cannot download torchvision's {arch} weights ({type(exc).__name__}); download "
                        f"{weights.url} on a machine with internet access and pass --init PATH") from None


def _read(path: pathlib.Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"--init {path}: no such file; pass 'torchvision' or a torchvision-format state dict")
    state = load_weights_only(path, "--init state dict", "pass a state dict saved with torch.save")
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"{path} is not a state dict (a mapping of names to tensors), as torchvision saves them")
    return state


def _grey_from_rgb(mine: torch.Tensor, theirs: torch.Tensor) -> bool:
    """A 1-channel stem that RGB weights fit once summed over their input channels."""
    return mine.shape[1] == 1 and theirs.shape[1] == 3 and mine.shape[0] == theirs.shape[0] \
        and mine.shape[2:] == theirs.shape[2:]


def _mismatch(key: str, mine: torch.Tensor, theirs: torch.Tensor) -> str | None:
    """Why a tensor the task reshapes is re-initialised (None: not such a tensor)."""
    if key in _CLASSIFIER and mine.shape[1:] == theirs.shape[1:]:
        return f"{mine.shape[0]} classes here, {theirs.shape[0]} in the weights"
    if key == _STEM_CONV and mine.shape[0] == theirs.shape[0]:
        if mine.shape[2:] != theirs.shape[2:]:
            k, theirs_k = mine.shape[-1], theirs.shape[-1]
            return f"{k}x{k} stem here (small input), {theirs_k}x{theirs_k} in the weights"
        return f"{mine.shape[1]} input channels here, {theirs.shape[1]} in the weights"
    return None


def _reinitialise(net: Supernet, key: str) -> None:
    module = net.get_submodule(key.rsplit(".", 1)[0])
    if isinstance(module, nn.Linear):
        module.reset_parameters()
    else:
        nn.init.kaiming_normal_(module.weight, mode="fan_out")  # as SlimConv2d initialises


def load_pretrained(net: Supernet, source: str) -> InitReport:
    """Load torchvision-format weights into ``net``'s largest subnet; report what was loaded.

    ``source`` is ``"torchvision"`` (torchvision's default ImageNet weights, downloaded once into
    torch's hub cache) or the path of a local torchvision-format state dict. See the module
    docstring for the layers that are adapted or re-initialised.
    """
    names = torchvision_names(net)
    state = _download(net.layout.name) if source == "torchvision" else _read(pathlib.Path(source))
    missing = [theirs for theirs in names.values() if theirs not in state]
    if missing:
        raise UserError(f"{source} has no '{missing[0]}' ({len(missing)} keys missing): not a torchvision "
                        f"{TORCHVISION_MODELS[net.layout.name]} state dict")
    report, target, copies = InitReport(source), net.state_dict(), {}
    for key, theirs_key in names.items():
        mine, theirs = target[key], state[theirs_key]
        if mine.shape == theirs.shape:
            copies[key] = theirs
            report.loaded.append(key)
        elif key == _STEM_CONV and _grey_from_rgb(mine, theirs):
            copies[key] = theirs.sum(dim=1, keepdim=True)
            report.adapted[key] = "RGB filters summed into the single input channel"
        elif (why := _mismatch(key, mine, theirs)) is not None:
            report.reinitialised[key] = why
        else:
            raise UserError(f"{source}: '{theirs_key}' has shape {tuple(theirs.shape)}, but the largest "
                            f"{net.layout.name} subnet needs {tuple(mine.shape)} for it (pretrained weights "
                            "fit the ImageNet layout with largest width multiplier 1.0)")
    with torch.no_grad():
        for key, value in copies.items():
            target[key].copy_(value)
        for key in report.reinitialised:
            _reinitialise(net, key)
    report.ignored = sorted(set(state) - set(names.values()))
    return report
