"""Checks of a bundle's contents against its own model, shared by ``adaptive.pt`` and the Hub
folder: the model config within bounds, every stored tensor shaped as the model needs *before*
the model is built, finite weights, resources that are the subnets' own, and preprocessing that
fits the model. Each check raises :class:`~pssnet.schema.FieldError` naming the field.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import torch

from .. import schema
from ..errors import UserError
from ..resources import LATENCY_DEVICES, UNITS, ResourceMeter
from ..schema import FieldError
from ..space import Subnet
from ..supernet_config import SupernetConfig

# Preprocessing bounds. Inputs are scaled to [0, 1] before normalisation, so a mean lies in
# [0, 1] and a standard deviation in (0, 1]; below 1e-3 a normalised pixel would exceed 1000.
MIN_STD = 1e-3
MIN_CROP_RATIO = 0.1
MIN_IMAGE_SIZE = 8  # pssnet train's smallest --image-size
IMAGE_SIZE_FACTOR = 8  # an input image is at most this many times the largest resolution
# Stored resources are recounted on load: FLOPs and parameters exactly (up to float rounding),
# table latencies to this relative tolerance.
COUNT_TOLERANCE = 1e-6
LATENCY_TOLERANCE = 1e-3


def model_config(value: Any) -> SupernetConfig:
    """The bundle's ``model_config`` as a checked :class:`SupernetConfig` (bounded fields: nothing
    is allocated from it yet)."""
    try:
        return SupernetConfig.from_dict(schema.mapping(value, "model_config"))
    except FieldError as exc:
        text = str(exc)
        raise FieldError(text if text.startswith("model_config") else f"model_config: {text}") from None


def expected_state_shapes(config: SupernetConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every entry of ``Supernet(config).state_dict()``, computed from the layout
    alone (no module is built); ``tests/test_bundle_checks.py`` keeps it in step with the supernet."""
    layout = config.layout()
    channels = layout.group_channels(config.space().largest().widths)
    shapes: dict[str, tuple[int, ...]] = {}
    for i, block in enumerate(layout.blocks):
        convs = [(f"features.{i}.body.{j}", conv) for j, conv in enumerate(block.body)]
        if block.shortcut is not None:
            convs.append((f"features.{i}.shortcut", block.shortcut))
        for name, conv in convs:
            c_in, c_out = conv.in_width.resolve(channels), conv.out_width.resolve(channels)
            shapes[f"{name}.conv.weight"] = (c_out, 1 if conv.depthwise else c_in, conv.kernel, conv.kernel)
            for part in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{name}.bn.{part}"] = (c_out,)
            shapes[f"{name}.bn.num_batches_tracked"] = ()
    c_in = layout.classifier_in.resolve(channels)
    shapes["classifier.1.weight"] = (layout.num_classes, c_in)
    shapes["classifier.1.bias"] = (layout.num_classes,)
    return shapes


def check_tensor_shapes(found: Mapping[str, Sequence[int]], expected: Iterable[tuple[str, Sequence[int]]],
                        describe: Callable[[str], str]) -> None:
    """Every ``expected`` (name, shape) present in ``found`` with that shape, and nothing else:
    compared on shapes alone, so that a damaged file is refused before anything is built from
    it. ``expected`` is consumed lazily (stops at the first missing name: a file claiming a
    million subnets costs no more than the tensors it holds); ``describe`` names a tensor."""
    seen = set()
    for name, shape in expected:
        if name not in found:
            raise FieldError(f"{describe(name)} is missing")
        if tuple(found[name]) != tuple(shape):
            raise FieldError(f"{describe(name)} has shape {list(found[name])}; the model needs {list(shape)}")
        seen.add(name)
    unknown = [name for name in found if name not in seen]
    if unknown:
        raise FieldError(f"{describe(unknown[0])} is not a tensor of the model")


def checked_state_dict(value: Any, config: SupernetConfig) -> dict[str, torch.Tensor]:
    """The stored weights, shaped as ``config``'s supernet needs (checked before it is built),
    floating weights cast to float32 and finite after that cast (1e300 in float64 is inf there)."""
    stored = schema.mapping(value, "state_dict")
    for name, tensor in stored.items():
        if not isinstance(tensor, torch.Tensor):
            raise FieldError(f"field 'state_dict.{name}' must be a tensor, got {type(tensor).__name__}")
    check_tensor_shapes({k: tuple(t.shape) for k, t in stored.items()}, expected_state_shapes(config).items(),
                        lambda name: f"field 'state_dict.{name}'")
    checked = {}
    for name, tensor in stored.items():
        if name.endswith("num_batches_tracked"):
            checked[name] = tensor
            continue
        if not tensor.is_floating_point():
            raise FieldError(f"field 'state_dict.{name}' must be a float tensor, got {tensor.dtype}")
        tensor = tensor.to(torch.float32)
        if not _all_finite(tensor):
            raise FieldError(f"field 'state_dict.{name}' has non-finite values (NaN or infinite weights)")
        checked[name] = tensor
    return checked


def _all_finite(tensor: torch.Tensor) -> bool:
    # A finite sum proves every element finite (one pass); an infinite one may be an overflow.
    return bool(torch.isfinite(tensor.sum())) or bool(torch.isfinite(tensor).all())


def resource_meter(config: SupernetConfig, luts: Any) -> ResourceMeter:
    """A meter for the bundle's subnets: FLOPs and parameters, and the latency of each kind
    whose stored table still reads (a table this pssnet cannot read is left out, and that kind's
    values are then only checked for being finite and positive)."""
    from ..latency.table import LatencyTable

    tables = {}
    for kind, data in schema.mapping(luts or {}, "luts").items():
        try:
            table = LatencyTable.from_dict(data)
        except UserError:
            continue
        if LATENCY_DEVICES.get(kind) == table.device:
            tables[kind] = table
    return ResourceMeter(config.layout(), tables)


def check_resources(subnet: Subnet, resources: Mapping[str, float], meter: ResourceMeter, where: str) -> None:
    """Stored resource values are the subnet's own: recounted (latency from the stored table
    where there is one), else finite and positive."""
    for kind, value in resources.items():
        if not value > 0:
            raise FieldError(f"field '{where}.{kind}' must be > 0, got {value:g}")
        if not meter.can_measure(kind):
            continue
        try:
            actual = meter.measure(kind, subnet)
        except UserError:  # a table without this subnet's entries: it cannot vouch for the value
            continue
        tolerance = LATENCY_TOLERANCE if kind in LATENCY_DEVICES else COUNT_TOLERANCE
        if not math.isclose(value, actual, rel_tol=tolerance, abs_tol=1e-9):
            raise FieldError(f"field '{where}.{kind}' is {value:.6g} {UNITS[kind]}, but the subnet has "
                             f"{actual:.6g} {UNITS[kind]}; the resources do not belong to the subnet")


def check_image_size(value: Any, where: str, config: SupernetConfig, optional: bool = False) -> Optional[int]:
    """An input image size the model can use: at least 8 px and at most 8x its largest resolution."""
    high = IMAGE_SIZE_FACTOR * config.resolutions[1]
    return schema.integer(value, where, MIN_IMAGE_SIZE, high, optional=optional)


def check_preprocessing(entry: Any, config: SupernetConfig, image_size: Optional[int]) -> None:
    """The optional ``preprocessing`` entry, against the model: its input channels, an image
    size it can use (the bundle's ``image_size`` when both are given), normalisation within
    sane ranges, one name per class, a crop ratio in [0.1, 1]."""
    schema.mapping(entry, "preprocessing")
    chans = schema.integer(schema.require(entry, "in_chans", "preprocessing"), "preprocessing.in_chans", 1, 64)
    if chans != config.in_chans:
        raise FieldError(f"field 'preprocessing.in_chans' is {chans}, but the model takes {config.in_chans} "
                         "input channel(s)")
    size = check_image_size(schema.require(entry, "image_size", "preprocessing"), "preprocessing.image_size", config)
    if image_size is not None and size != image_size:
        raise FieldError(f"field 'preprocessing.image_size' is {size}, but the bundle's image_size is {image_size}")
    for key, low in (("mean", 0.0), ("std", MIN_STD)):
        values = schema.sequence(schema.require(entry, key, "preprocessing"), f"preprocessing.{key}", chans)
        for i, v in enumerate(values):
            schema.number(v, f"preprocessing.{key}[{i}]", low, 1.0)
    names = schema.sequence(schema.require(entry, "class_names", "preprocessing"), "preprocessing.class_names",
                            config.num_classes)
    for i, name in enumerate(names):
        schema.string(name, f"preprocessing.class_names[{i}]")
    schema.number(entry.get("crop_ratio"), "preprocessing.crop_ratio", MIN_CROP_RATIO, 1.0, optional=True)
