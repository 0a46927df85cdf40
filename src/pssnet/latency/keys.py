"""Latency table keys: what identifies the computation of one block (or the classifier).

A key holds everything that changes a block's computation: kind, input size, in/out/mid
channels, kernel, stride and a structure signature (body convolutions, residual path,
pooling). Blocks come from the architecture's one :class:`~pssnet.layout.Layout`, so nothing
here re-describes a block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from ..layout import BlockSpec, ConvSpec, Layout, Width
from ..space import Subnet

CLASSIFIER = "classifier"


def _conv_signature(conv: ConvSpec) -> str:
    text = f"{'dw' if conv.depthwise else 'c'}{conv.kernel}"
    if conv.stride > 1:
        text += f"s{conv.stride}"
    return text + (f"-{conv.act}" if conv.act else "")


def block_signature(block: BlockSpec) -> str:
    """What a block computes apart from its channels and input size, e.g. ``c1-relu6,dw3-relu6,c1+id``."""
    text = ",".join(_conv_signature(c) for c in block.body)
    if block.residual:
        text += "+id" if block.shortcut is None else "+proj:" + _conv_signature(block.shortcut)
    if block.post_act:
        text += f">{block.post_act}"
    return text + ("+maxpool" if block.max_pool else "")


def _check_describable(block: BlockSpec, index: int) -> None:
    """The key names in/mid/out channels only: every conv must use those widths (or constants)."""
    named = {block.in_width, block.mid_width, block.out_width}
    convs = block.body + ((block.shortcut,) if block.shortcut is not None else ())
    for conv in convs:
        for width in (conv.in_width, conv.out_width):
            if width.group is not None and width not in named:
                raise ValueError(f"block {index} ({block.kind}) has a conv width {width} that is not its "
                                 "in, mid or out width; its latency key would not determine its computation")


def block_key(block: BlockSpec, size: int, channels: Mapping[int, int] | Sequence[int]) -> str:
    """The table key of ``block`` at input ``size`` for per-group ``channels``."""
    c_in, c_out = block.in_width.resolve(channels), block.out_width.resolve(channels)
    c_mid = block.mid_width.resolve(channels)
    return (f"{block.kind}|s{size}|in{c_in}|out{c_out}|mid{c_mid}|k{block.kernel}|st{block.stride}"
            f"|{block_signature(block)}")


def classifier_key(size: int, features: int, num_classes: int) -> str:
    """Key of the average pool (over ``size`` x ``size``) + linear classifier."""
    return f"{CLASSIFIER}|s{size}|in{features}|out{num_classes}"


def block_input_sizes(layout: Layout, resolution: int) -> list[int]:
    """Spatial input size of every block, then the final feature-map size (classifier input)."""
    sizes = [resolution]
    for block in layout.blocks:
        # 'same'-padded convs and the 3x3/2 max-pool each take ceil(size / stride); these compose.
        sizes.append((sizes[-1] - 1) // block.stride + 1)
    return sizes


def _groups_of(widths: Iterable[Width]) -> tuple[int, ...]:
    return tuple(sorted({w.group for w in widths if w.group is not None}))


@dataclass(frozen=True)
class Part:
    """A block of a layout (or its classifier, ``block`` None) as the table sees it."""

    layout: Layout
    position: int  # index into block_input_sizes(): the block index, or len(blocks) for the classifier
    block: BlockSpec | None

    @property
    def name(self) -> str:
        return "the classifier" if self.block is None else f"block {self.position}"

    @property
    def groups(self) -> tuple[int, ...]:
        """The searchable groups whose channels change this part (tied widths counted once)."""
        if self.block is None:
            return _groups_of((self.layout.classifier_in,))
        return _groups_of((self.block.in_width, self.block.mid_width, self.block.out_width))

    def key(self, size: int, channels: Mapping[int, int] | Sequence[int]) -> str:
        if self.block is None:
            return classifier_key(size, int(self.layout.classifier_in.resolve(channels)), self.layout.num_classes)
        return block_key(self.block, size, channels)


def layout_parts(layout: Layout) -> list[Part]:
    """Every block of ``layout``, then its classifier."""
    for index, block in enumerate(layout.blocks):
        _check_describable(block, index)
    return [Part(layout, i, b) for i, b in enumerate(layout.blocks)] + [Part(layout, len(layout.blocks), None)]


def subnet_keys(layout: Layout, subnet: Subnet) -> list[str]:
    """Table keys of every block of ``subnet``, then its classifier's key."""
    channels = layout.group_channels(subnet.widths)
    sizes = block_input_sizes(layout, subnet.resolution)
    return [part.key(sizes[part.position], channels) for part in layout_parts(layout)]
