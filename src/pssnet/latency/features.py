"""What a block computes, as numbers a latency model can use: MACs by convolution type, bytes of
activations and weights, channel counts.

Features are computed from a block's :class:`~pssnet.layout.BlockSpec` and per-group channels
that may be numpy arrays, so one call gives the features of one configuration or of a whole
grid of them (the vectorised predictor evaluates a model on every cell of a part's grid).
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import numpy as np

from ..layout import BlockSpec, ConvSpec
from .keys import CLASSIFIER, Part

Number = Union[int, float, np.ndarray]
BYTES = 4  # float32 activations and weights

# Every feature a block model may use, in a fixed order; models store the names they use.
FEATURES = (
    "one",            # per-call cost of the block's modules
    "macs_pointwise", "macs_depthwise", "macs_dense",  # multiply-accumulates by convolution type
    "in_bytes", "out_bytes", "mid_bytes",  # activations read / written (mid: every inner tensor)
    "weight_bytes",
    "c_in", "c_mid", "c_out",  # channel counts
    "pixels",         # output pixels of the block's first convolution (per-pixel loops)
)


def family_of(key: str) -> str:
    """A key without its size and channels: the block kind, kernel, stride and structure that one
    model covers (``inverted_residual|k3|st2|c1-relu6,dw3s2-relu6,c1``; ``classifier|out10``)."""
    fields = key.split("|")
    kept = [f for f in fields[1:] if not (f[:1] == "s" and f[1:].isdigit()) and not _is_channel_field(f)]
    if fields[0] == CLASSIFIER:
        kept = [f for f in fields[1:] if f.startswith("out")]
    return "|".join([fields[0]] + kept)


def _is_channel_field(field: str) -> bool:
    for prefix in ("in", "out", "mid"):
        if field.startswith(prefix) and field[len(prefix):].isdigit():
            return True
    return False


def _out_size(size: Number, stride: int) -> Number:
    # 'same'-padded odd kernels and the 3x3/2 max-pool: ceil(size / stride).
    return (size - 1) // stride + 1


def _conv(conv: ConvSpec, size: Number, channels: Mapping[int, Number] | Sequence[Number],
          totals: dict[str, Number]) -> Number:
    """Add one conv + BN + activation to ``totals``; returns its output size."""
    c_in, c_out = conv.in_width.resolve(channels), conv.out_width.resolve(channels)
    out = _out_size(size, conv.stride)
    weights = conv.kernel * conv.kernel * c_out * (1 if conv.depthwise else c_in)
    kind = "macs_depthwise" if conv.depthwise else ("macs_pointwise" if conv.kernel == 1 else "macs_dense")
    totals[kind] = totals[kind] + weights * out * out
    totals["weight_bytes"] = totals["weight_bytes"] + BYTES * weights
    return out


def block_features(block: BlockSpec, size: Number,
                   channels: Mapping[int, Number] | Sequence[Number]) -> dict[str, Number]:
    """Features of ``block`` at input ``size`` for per-group ``channels`` (numbers or arrays)."""
    totals: dict[str, Number] = {name: 0 for name in FEATURES}
    c_in, c_mid, c_out = (w.resolve(channels) for w in (block.in_width, block.mid_width, block.out_width))
    current, inner = size, 0
    for i, conv in enumerate(block.body):
        current = _conv(conv, current, channels, totals)
        if i == 0:
            totals["pixels"] = current * current
        if i < len(block.body) - 1:
            inner = inner + conv.out_width.resolve(channels) * current * current
    if block.shortcut is not None:
        _conv(block.shortcut, size, channels, totals)
    final = _out_size(current, 2) if block.max_pool else current
    totals.update(one=1, in_bytes=BYTES * c_in * size * size, out_bytes=BYTES * c_out * final * final,
                  mid_bytes=BYTES * inner, c_in=c_in, c_mid=c_mid, c_out=c_out)
    if block.max_pool:  # the pool reads the conv's full output
        totals["mid_bytes"] = totals["mid_bytes"] + BYTES * c_out * current * current
    return totals


def classifier_features(size: Number, features: Number, num_classes: int) -> dict[str, Number]:
    """Features of the global average pool over ``size`` x ``size`` and the linear layer."""
    totals: dict[str, Number] = {name: 0 for name in FEATURES}
    totals.update(one=1, macs_pointwise=features * num_classes, in_bytes=BYTES * features * size * size,
                  out_bytes=BYTES * num_classes, weight_bytes=BYTES * features * num_classes,
                  c_in=features, c_mid=features, c_out=num_classes, pixels=size * size)
    return totals


def part_features(part: Part, size: Number, channels: Mapping[int, Number] | Sequence[Number]) -> dict[str, Number]:
    """Features of a part of a layout (a block, or the classifier) at input ``size``."""
    if part.block is None:
        layout = part.layout
        return classifier_features(size, layout.classifier_in.resolve(channels), layout.num_classes)
    return block_features(part.block, size, channels)


def stacked(features: Mapping[str, Number], names: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    """``[*shape, len(names)]`` array of the named features broadcast over a grid of configurations."""
    return np.stack([np.broadcast_to(np.asarray(features[n], dtype=np.float64), shape) for n in names], axis=-1)
