"""The top-level functions that take a supernet: ``pssnet.canonicalize``, ``pssnet.count_flops``, ...

The pure functions below them (:mod:`pssnet.layout`, :mod:`pssnet.resources`) take a
:class:`~pssnet.layout.Layout` and never see a module. These thin adapters sit above both, so
that ``pssnet.count_flops(net, s)`` keeps working as documented; each also takes a Layout.
"""

from __future__ import annotations

import reprlib
from typing import Optional, Union

import numpy as np

from . import resources
from .layout import Layout
from .layout import canonicalize as canonicalize_layout
from .space import SearchSpace, SpaceError, Subnet
from .supernet import Supernet, SubnetTypeError

NetOrLayout = Union[Supernet, Layout]


def _layout(net: NetOrLayout) -> Layout:
    if isinstance(net, Supernet):
        return net.layout
    if isinstance(net, Layout):
        return net
    raise TypeError(f"expected a Supernet or a Layout, got {type(net).__name__}")


def canonicalize(net: NetOrLayout, subnet: Subnet, space: Optional[SearchSpace] = None) -> Subnet:
    """The canonical form of ``subnet`` (:func:`pssnet.layout.canonicalize`): the same network,
    one identity per architecture. ``net`` is a supernet (its layout and space), or a Layout
    together with ``space``."""
    space = space if space is not None else getattr(net, "space", None)
    if space is None:
        raise TypeError("canonicalize needs a Supernet, or a Layout and its SearchSpace")
    return canonicalize_layout(_layout(net), subnet, space)


def _member(net: NetOrLayout, subnet: Subnet, space: Optional[SearchSpace]) -> Layout:
    """The layout to count ``subnet`` on, once ``subnet`` is known to be a member of the space (a
    supernet's own, or ``space``): a subnet outside it (a width of 3.0) raises
    :class:`~pssnet.space.SpaceError`, as :func:`canonicalize` does, rather than count a network
    the supernet does not hold. A Layout without a space can check the number of widths only."""
    layout = _layout(net)
    space = space if space is not None else getattr(net, "space", None)
    if not isinstance(subnet, Subnet):
        raise SubnetTypeError(f"expected a Subnet, got {type(subnet).__name__} {reprlib.repr(subnet)}; pass "
                              "Subnet(resolution, widths) or Subnet.from_dict(...)")
    if space is not None:
        space.validate(subnet)
    elif len(subnet.widths) != len(layout.base_channels):
        raise SpaceError(f"subnet has {len(subnet.widths)} widths but {layout.name} has "
                         f"{len(layout.base_channels)} width multipliers")
    return layout


def count_macs(net: NetOrLayout, subnet: Subnet, space: Optional[SearchSpace] = None) -> int:
    """Exact multiply-accumulates of one subnet (of the space of ``net``, or ``space``)."""
    return resources.count_macs(_member(net, subnet, space), subnet)


def count_flops(net: NetOrLayout, subnet: Subnet, space: Optional[SearchSpace] = None) -> float:
    """FLOPs of one subnet, in millions of multiply-accumulates (the paper's convention)."""
    return resources.count_flops(_member(net, subnet, space), subnet)


def count_params(net: NetOrLayout, subnet: Subnet, space: Optional[SearchSpace] = None) -> int:
    """Trainable parameters of one subnet (conv, BatchNorm affine, classifier)."""
    return resources.count_params(_member(net, subnet, space), subnet)


def count_arrays(net: NetOrLayout, resolutions: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised counts for many subnets: (FLOPs in millions ``[n]``, parameters ``[n]``)."""
    return resources.count_arrays(_layout(net), resolutions, widths)


def flops_array(net: NetOrLayout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """FLOPs (millions of MACs) of many subnets at once."""
    return resources.flops_array(_layout(net), resolutions, widths)


def params_array(net: NetOrLayout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Parameter counts of many subnets at once."""
    return resources.params_array(_layout(net), resolutions, widths)
