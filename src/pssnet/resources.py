"""Resource counting: FLOPs (millions of multiply-accumulates) and parameters.

One walk over the layout serves both a single subnet (Python ints) and many subnets at once
(numpy arrays): the arithmetic is written once and works for either kind of number.
Conventions: conv and linear MACs only (BatchNorm, activations, pooling and adds are free),
the classifier counted for the actual number of classes, the input resize not counted. This
is what ``torch.utils.flop_counter.FlopCounterMode`` measures (at 2 FLOPs per MAC).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from .layout import ConvSpec, Layout
from .space import Subnet, make_divisible_array

Number = Union[int, np.ndarray]


def _layout_of(net_or_layout) -> Layout:
    return net_or_layout if isinstance(net_or_layout, Layout) else net_or_layout.layout


def _out_size(size: Number, stride: int) -> Number:
    # A k x k conv (odd k, padding k // 2) or the 3x3/2 max-pool with padding 1.
    return (size - 1) // stride + 1


def _conv_cost(conv: ConvSpec, size: Number, channels: Sequence[Number]) -> tuple[Number, Number, Number]:
    """(MACs, parameters, output size) of one conv + BatchNorm."""
    c_in, c_out = conv.in_width.resolve(channels), conv.out_width.resolve(channels)
    out = _out_size(size, conv.stride)
    weights = conv.kernel * conv.kernel * c_out * (1 if conv.depthwise else c_in)
    return weights * out * out, weights + 2 * c_out, out


def _count(layout: Layout, resolution: Number, channels: Sequence[Number]) -> tuple[Number, Number]:
    """Total (MACs, parameters) for per-group ``channels`` at input ``resolution``."""
    macs: Number = 0
    params: Number = 0
    size = resolution
    for block in layout.blocks:
        block_in = size
        for conv in block.body:
            m, p, size = _conv_cost(conv, size, channels)
            macs, params = macs + m, params + p
        if block.shortcut is not None:
            m, p, _ = _conv_cost(block.shortcut, block_in, channels)
            macs, params = macs + m, params + p
        if block.max_pool:
            size = _out_size(size, 2)
    features = layout.classifier_in.resolve(channels)
    macs = macs + features * layout.num_classes
    params = params + features * layout.num_classes + layout.num_classes
    return macs, params


def count_macs(net_or_layout, subnet: Subnet) -> int:
    """Exact multiply-accumulates of one subnet."""
    layout = _layout_of(net_or_layout)
    return _count(layout, subnet.resolution, layout.group_channels(subnet.widths))[0]


def count_flops(net_or_layout, subnet: Subnet) -> float:
    """FLOPs of one subnet, in millions of multiply-accumulates (the paper's convention)."""
    return count_macs(net_or_layout, subnet) / 1e6


def count_params(net_or_layout, subnet: Subnet) -> int:
    """Trainable parameters of one subnet (conv, BatchNorm affine, classifier)."""
    layout = _layout_of(net_or_layout)
    return _count(layout, subnet.resolution, layout.group_channels(subnet.widths))[1]


def _group_channels_array(layout: Layout, widths: np.ndarray) -> list[np.ndarray]:
    widths = np.asarray(widths, dtype=np.float64)
    if widths.ndim != 2 or widths.shape[1] != len(layout.base_channels):
        raise ValueError(f"widths must have shape [n, {len(layout.base_channels)}], got {widths.shape}")
    return [make_divisible_array(base * widths[:, g]) for g, base in enumerate(layout.base_channels)]


def count_arrays(net_or_layout, resolutions: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised counts for many subnets: (FLOPs in millions ``[n]``, parameters ``[n]``)."""
    layout = _layout_of(net_or_layout)
    channels = _group_channels_array(layout, widths)
    res = np.asarray(resolutions, dtype=np.int64)
    macs, params = _count(layout, res, channels)
    n = res.shape[0]
    return np.broadcast_to(macs, (n,)) / 1e6, np.broadcast_to(np.asarray(params, dtype=np.int64), (n,)).copy()


def flops_array(net_or_layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """FLOPs (millions of MACs) of many subnets at once."""
    return count_arrays(net_or_layout, resolutions, widths)[0]


def params_array(net_or_layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Parameter counts of many subnets at once."""
    return count_arrays(net_or_layout, resolutions, widths)[1]
