"""Architectures as stage tables, expanded into :class:`~pssnet.layout.Layout` by one loop each.

Searchable widths (one multiplier each, in this order):

- ``mobilenet_v1`` (14): the stem and each of the 13 depthwise-separable blocks (its output).
- ``mobilenet_v2`` (8): the stem and the seven inverted-residual stages (all blocks of a stage
  share the output width). A block's expansion width is 6x its actual input width. The final
  1x1 conv keeps 1280 channels in every subnet, as in the reference (and torchvision below
  width 1.0).
- ``resnet50`` (9): the stem, then for each of the four stages the bottleneck output width
  (shared by the stage because of the residual adds) and the bottleneck mid width
  (``layer1_mid``, ``layer1_out``, ...).

Channels are ``make_divisible(base * multiplier, 8)``. In the paper's range [0.75, 1.0] this
leaves MobileNetV2's 16- and 24-channel stages (``stage1``, ``stage2``) at full width for every
multiplier; ``pssnet info`` lists the channel counts each stage can take.

Small-input variants (``small_input=True``, for 28-32 px images) keep the structure but use a
stride-1 stem (ResNet: a 3x3 stride-1 stem without max-pool) and resolutions 24..32 step 4.

No layout has classifier dropout (the reference trains without it): a dropout mask would
perturb the in-place distillation teacher and every pool score. ``create_supernet(dropout=P)``
adds it for those who want it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

from .layout import BlockSpec, ConvSpec, Layout, Width
from .schema import FieldError

# (channels, stride) of MobileNetV1's 13 depthwise-separable blocks.
MOBILENET_V1_BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)

# (expansion, channels, blocks, stride) of MobileNetV2's seven stages, as in torchvision.
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)
MOBILENET_V2_LAST_CHANNEL = 1280  # the final 1x1 conv's channels, the same in every subnet

# (mid channels, out channels, blocks, stride) of ResNet-50's four bottleneck stages.
RESNET50_STAGES = ((64, 256, 3, 1), (128, 512, 4, 2), (256, 1024, 6, 2), (512, 2048, 3, 2))


def _conv_block(c_in: Width, c_out: Width, kernel: int, stride: int, act: str) -> BlockSpec:
    return BlockSpec("conv", (ConvSpec(c_in, c_out, kernel, stride, act=act),))


def mobilenet_v1_layout(num_classes: int, in_chans: int, small_input: bool) -> Layout:
    # ReLU6 after every conv, as the reference's models/mobilenet_v1.py.
    blocks = [_conv_block(Width.constant(in_chans), Width(0), 3, 1 if small_input else 2, "relu6")]
    for group, (_, stride) in enumerate(MOBILENET_V1_BLOCKS, start=1):
        prev = Width(group - 1)
        blocks.append(BlockSpec("dwsep", (
            ConvSpec(prev, prev, 3, stride, depthwise=True, act="relu6"),
            ConvSpec(prev, Width(group), 1, act="relu6"),
        )))
    return Layout(
        name="mobilenet_v1",
        group_names=("stem",) + tuple(f"block{i}" for i in range(1, 14)),
        base_channels=(32,) + tuple(c for c, _ in MOBILENET_V1_BLOCKS),
        blocks=tuple(blocks),
        classifier_in=Width(13),
        num_classes=num_classes,
        in_chans=in_chans,
    )


def _inverted_residual(c_in: Width, c_out: Width, expansion: int, stride: int) -> BlockSpec:
    mid = Width(c_in.group, expansion)
    body = [] if expansion == 1 else [ConvSpec(c_in, mid, 1, act="relu6")]
    body += [
        ConvSpec(mid, mid, 3, stride, depthwise=True, act="relu6"),
        ConvSpec(mid, c_out, 1, act=None),
    ]
    # Same group in and out means equal channels in every subnet, so the skip is always valid.
    return BlockSpec("inverted_residual", tuple(body), residual=stride == 1 and c_in == c_out)


def mobilenet_v2_layout(num_classes: int, in_chans: int, small_input: bool) -> Layout:
    blocks = [_conv_block(Width.constant(in_chans), Width(0), 3, 1 if small_input else 2, "relu6")]
    prev = Width(0)
    for group, (expansion, _, repeats, stride) in enumerate(MOBILENET_V2_STAGES, start=1):
        for i in range(repeats):
            blocks.append(_inverted_residual(prev, Width(group), expansion, stride if i == 0 else 1))
            prev = Width(group)
    # The final 1x1 conv is a plain conv (reference: USConv2d(320, 1280) without a layer id).
    head = Width.constant(MOBILENET_V2_LAST_CHANNEL)
    blocks.append(_conv_block(prev, head, 1, 1, "relu6"))
    return Layout(
        name="mobilenet_v2",
        group_names=("stem",) + tuple(f"stage{i}" for i in range(1, 8)),
        base_channels=(32,) + tuple(c for _, c, _, _ in MOBILENET_V2_STAGES),
        blocks=tuple(blocks),
        classifier_in=head,
        num_classes=num_classes,
        in_chans=in_chans,
    )


def _bottleneck(c_in: Width, mid: Width, c_out: Width, stride: int, first: bool) -> BlockSpec:
    body = (
        ConvSpec(c_in, mid, 1),
        ConvSpec(mid, mid, 3, stride),
        ConvSpec(mid, c_out, 1, act=None),
    )
    shortcut = ConvSpec(c_in, c_out, 1, stride, act=None) if first else None
    return BlockSpec("bottleneck", body, residual=True, shortcut=shortcut, post_act="relu")


def resnet50_layout(num_classes: int, in_chans: int, small_input: bool) -> Layout:
    if small_input:
        stem = _conv_block(Width.constant(in_chans), Width(0), 3, 1, "relu")
    else:
        stem = BlockSpec("conv", (ConvSpec(Width.constant(in_chans), Width(0), 7, 2),), max_pool=True)
    blocks = [stem]
    prev = Width(0)
    names, bases = ["stem"], [64]
    for stage, (mid_c, out_c, repeats, stride) in enumerate(RESNET50_STAGES, start=1):
        mid, out = Width(len(names)), Width(len(names) + 1)
        names += [f"layer{stage}_mid", f"layer{stage}_out"]
        bases += [mid_c, out_c]
        for i in range(repeats):
            blocks.append(_bottleneck(prev, mid, out, stride if i == 0 else 1, first=i == 0))
            prev = out
    return Layout(
        name="resnet50",
        group_names=tuple(names),
        base_channels=tuple(bases),
        blocks=tuple(blocks),
        classifier_in=prev,
        num_classes=num_classes,
        in_chans=in_chans,
    )


@dataclass(frozen=True)
class ArchInfo:
    """How to lay out an architecture, its default resolution ranges (min, max, step), and what
    its earlier layouts were.

    ``retired_layouts[i]`` says what layout version ``i + 1`` was; the current version is the
    next one. Stored model_configs record their version, so that weights trained for a retired
    layout are refused in one line instead of running in a network they were not trained for.
    """

    layout: Callable[[int, int, bool], Layout]
    imagenet_resolutions: tuple[int, int, int] = (128, 224, 8)
    small_resolutions: tuple[int, int, int] = (24, 32, 4)
    retired_layouts: tuple[str, ...] = ()

    @property
    def layout_version(self) -> int:
        return len(self.retired_layouts) + 1


ARCHITECTURES: Mapping[str, ArchInfo] = MappingProxyType({
    "mobilenet_v1": ArchInfo(mobilenet_v1_layout, retired_layouts=(
        "the older MobileNetV1 with ReLU activations (now ReLU6, as in the reference)",)),
    "mobilenet_v2": ArchInfo(mobilenet_v2_layout, retired_layouts=(
        "the older 9-width MobileNetV2 space (a searchable final 1x1 conv of 960 to 1280 channels; "
        "now fixed at 1280 as in the paper, leaving 8 widths)",)),
    "resnet50": ArchInfo(resnet50_layout),
})


def arch_info(name: str) -> ArchInfo:
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):  # TypeError: an unhashable name
        raise FieldError(f"unknown architecture '{name}'; choose one of: {', '.join(ARCHITECTURES)}") from None
