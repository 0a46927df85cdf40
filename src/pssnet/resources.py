"""Resources of subnets: the resource kinds, FLOPs and parameter counters, and the meter that
measures any kind (counted, or predicted by a latency table). Everything here takes a
:class:`~pssnet.layout.Layout` (a supernet passes ``net.layout``; the top-level ``pssnet.count_*``
functions take the supernet itself).

One walk over the layout serves both a single subnet (Python ints) and many subnets at once
(numpy arrays): the arithmetic is written once and works for either kind of number.
Conventions: conv and linear MACs only (BatchNorm, activations, pooling and adds are free),
the classifier counted for the actual number of classes, the input resize not counted. This
is what ``torch.utils.flop_counter.FlopCounterMode`` measures (at 2 FLOPs per MAC).
"""

from __future__ import annotations

from typing import Mapping, Protocol, Sequence, Union

import numpy as np

from .errors import UserError
from .layout import ConvSpec, Layout
from .space import Subnet

Number = Union[int, np.ndarray]

KINDS = ("flops", "params", "latency_cpu", "latency_gpu")
UNITS = {"flops": "MFLOPs", "params": "M params", "latency_cpu": "ms", "latency_gpu": "ms"}
# The device type a latency table must be measured on to serve each latency kind.
LATENCY_DEVICES = {"latency_cpu": "cpu", "latency_gpu": "cuda"}


def latency_kind_for(device: str) -> str:
    """The latency kind a table measured on ``device`` (``"cpu"`` or ``"cuda"``) serves."""
    for kind, table_device in LATENCY_DEVICES.items():
        if table_device == device:
            return kind
    raise UserError(f"latency tables are measured on {' or '.join(LATENCY_DEVICES.values())}, not '{device}'")


class LatencyPredictor(Protocol):
    """What the meter needs of a latency table (:class:`pssnet.latency.LatencyTable`)."""

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``: the device the table was measured on."""

    def predict(self, layout: Layout, subnet: Subnet) -> float:
        """Latency of one subnet in milliseconds."""

    def predict_arrays(self, layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Latencies (ms) of many subnets: resolutions ``[n]``, multipliers ``[n, groups]``."""


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


def count_macs(layout: Layout, subnet: Subnet) -> int:
    """Exact multiply-accumulates of one subnet."""
    return _count(layout, subnet.resolution, layout.group_channels(subnet.widths))[0]


def count_flops(layout: Layout, subnet: Subnet) -> float:
    """FLOPs of one subnet, in millions of multiply-accumulates (the paper's convention)."""
    return count_macs(layout, subnet) / 1e6


def count_params(layout: Layout, subnet: Subnet) -> int:
    """Trainable parameters of one subnet (conv, BatchNorm affine, classifier)."""
    return _count(layout, subnet.resolution, layout.group_channels(subnet.widths))[1]


def count_arrays(layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised counts for many subnets: (FLOPs in millions ``[n]``, parameters ``[n]``)."""
    channels = layout.group_channels_array(widths)
    res = np.asarray(resolutions, dtype=np.int64)
    macs, params = _count(layout, res, channels)
    n = res.shape[0]
    return np.broadcast_to(macs, (n,)) / 1e6, np.broadcast_to(np.asarray(params, dtype=np.int64), (n,)).copy()


def flops_array(layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """FLOPs (millions of MACs) of many subnets at once."""
    return count_arrays(layout, resolutions, widths)[0]


def params_array(layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Parameter counts of many subnets at once."""
    return count_arrays(layout, resolutions, widths)[1]


class ResourceMeter:
    """Measures any constraint kind of a supernet's subnets (FLOPs, params, table latency)."""

    def __init__(self, layout: Layout, luts: Mapping[str, LatencyPredictor] | None = None) -> None:
        if not isinstance(layout, Layout):  # a supernet used to be accepted here
            raise TypeError(f"ResourceMeter takes a Layout, got {type(layout).__name__}: pass net.layout")
        self.layout = layout
        self.luts: dict[str, LatencyPredictor] = dict(luts or {})
        for kind, table in self.luts.items():
            if kind not in LATENCY_DEVICES:
                raise UserError(f"a latency table was given for '{kind}'; tables are for latency_cpu or latency_gpu")
            if getattr(table, "device", LATENCY_DEVICES[kind]) != LATENCY_DEVICES[kind]:
                raise UserError(f"the table given for {kind} was measured on '{table.device}'; "
                                f"pass a table built on '{LATENCY_DEVICES[kind]}' (pssnet lut build)")

    def _table(self, kind: str) -> LatencyPredictor:
        if kind not in KINDS:
            raise UserError(f"unknown constraint type '{kind}'; use one of {', '.join(KINDS)}")
        table = self.luts.get(kind)
        if table is None:
            raise UserError(f"{kind} needs a latency table: pass --lut FILE (build one with pssnet lut build)")
        return table

    def can_measure(self, kind: str) -> bool:
        return kind in ("flops", "params") or kind in self.luts

    def measure(self, kind: str, subnet: Subnet) -> float:
        """One subnet's resource value in the kind's unit."""
        if kind == "flops":
            return count_flops(self.layout, subnet)
        if kind == "params":
            return count_params(self.layout, subnet) / 1e6
        return float(self._table(kind).predict(self.layout, subnet))

    def measure_arrays(self, kind: str, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`measure` for many subnets given as arrays."""
        if kind == "flops":
            return flops_array(self.layout, resolutions, widths)
        if kind == "params":
            return params_array(self.layout, resolutions, widths) / 1e6
        return np.asarray(self._table(kind).predict_arrays(self.layout, resolutions, widths), dtype=np.float64)

    def measure_all(self, subnet: Subnet) -> dict[str, float]:
        """Every kind this meter can measure (latency only where a table is present)."""
        return {kind: self.measure(kind, subnet) for kind in KINDS if self.can_measure(kind)}
