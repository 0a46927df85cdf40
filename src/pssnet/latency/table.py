"""Latency look-up tables measured on the user's device, and the latency predictor.

A subnet's latency is predicted as a sum over its blocks and its classifier (average pool +
linear), each part's value being its measured entry or, in a fitted table, its block model's
prediction, then corrected end to end (:mod:`.correction`): a per-network overhead, a scale
and optionally a price per MB of weights and activations, all fitted on whole subnets timed
end to end when the table was built.

Tables are versioned JSON with the device description, the search space they were built for
and the measurement settings. ``pssnet-lut/2`` adds the build method (``exhaustive``: every
entry measured alone; ``fitted``: entries measured inside whole subnets, block models for the
rest), the block models, the correction and the whole-subnet timings it was fitted on.
``pssnet-lut/1`` files are read as before: entries plus overhead.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Mapping

import numpy as np

from .. import schema
from ..errors import UserError
from ..fileio import write_text_atomic
from ..layout import Layout
from ..resources import LATENCY_DEVICES, latency_kind_for
from ..schema import FieldError
from ..space import Subnet
from .context import SubnetTiming
from .correction import Correction
from .features import part_features
from .fit import BlockModel
from .grid import MeasuredIndex, PartGrid, family_of_part, model_key
from .keys import Part, block_input_sizes, layout_parts

FORMAT = "pssnet-lut/2"
FORMAT_V1 = "pssnet-lut/1"
METHODS = ("exhaustive", "fitted")
MB = 1e6


class LatencyTable:
    """Per-block latencies (ms) on one device, measured or fitted; predicts subnet latency as a
    corrected sum over blocks."""

    def __init__(self, entries: Mapping[str, float], device_info: Mapping[str, Any],
                 model_config: Mapping[str, Any], batch: int = 1, settings: Mapping[str, Any] | None = None,
                 complete: bool = True, overhead_ms: float = 0.0, source: str | None = None,
                 method: str = "exhaustive", models: Mapping[str, BlockModel] | None = None,
                 correction: Correction | None = None, timings: Iterable[SubnetTiming] = (),
                 build: Mapping[str, Any] | None = None) -> None:
        self.entries = {str(k): float(v) for k, v in entries.items()}  # measured (see the module docstring)
        self.device_info = dict(device_info)
        self.model_config = dict(model_config)
        self.batch = int(batch)
        self.settings = dict(settings or {})
        self.complete = complete
        # Per-network time outside every block (module traversal, caches refilled between
        # blocks), calibrated at build time on whole subnets; added to every prediction.
        self.overhead_ms = float(overhead_ms)
        self.source = source  # file it came from, for error messages
        self.method = method
        self.models = dict(models or {})  # model key (grid.model_key) -> block model; fitted tables only
        self.correction = correction or Correction()
        self.timings = list(timings)  # whole subnets timed end to end while building
        self.build = dict(build or {})  # what the build did: seconds, sample sizes, adaptive rounds
        self._index: tuple[tuple[int, int], MeasuredIndex] | None = None

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``: which latency constraint (latency_cpu / latency_gpu) it serves."""
        return self.device_info["type"]

    def __len__(self) -> int:
        return len(self.entries)

    # ---------------------------------------------------------------- prediction

    def _missing(self, layout: Layout, key: str, where: str) -> UserError:
        source = self.source or "this table"
        cfg = self.model_config
        hint = f"pssnet lut build --arch {layout.name}"
        hint += " --small-input" if cfg.get("small_input") else ""
        return UserError(f"no latency entry for {where} ({key}) in {source}: rebuild the table with "
                         f"`{hint} --num-classes {layout.num_classes} --in-chans {layout.in_chans} ...` "
                         "for this search space")

    def _measured_index(self) -> MeasuredIndex:
        stamp = (id(self.entries), len(self.entries))  # builds add entries or replace the dict
        if self._index is None or self._index[0] != stamp:
            self._index = (stamp, MeasuredIndex(self.entries))
        return self._index[1]

    def _check_in_space(self, resolutions: np.ndarray, widths: np.ndarray) -> None:
        """A fitted table predicts inside the space it was fitted on, never beyond it."""
        if self.method != "fitted":
            return
        res, low_high = self.model_config.get("resolutions"), self.model_config.get("width_range")
        if res and (resolutions.min() < res[0] or resolutions.max() > res[1]):
            raise UserError(f"resolution {int(resolutions.min() if resolutions.min() < res[0] else resolutions.max())}"
                            f" is outside the resolutions {res[0]}..{res[1]} that {self.source or 'this table'} "
                            "was fitted on: rebuild it with pssnet lut build --resolutions for this space")
        if low_high and widths.size and (widths.min() < low_high[0] - 1e-9 or widths.max() > low_high[1] + 1e-9):
            raise UserError(f"width multipliers {widths.min():g}..{widths.max():g} reach outside the range "
                            f"{low_high[0]}..{low_high[1]} that {self.source or 'this table'} was fitted on: "
                            "rebuild it with pssnet lut build --width-range for this space")

    def _corrected(self, values: np.ndarray, features: Mapping[str, Any] | None) -> np.ndarray:
        c = self.correction
        out = c.scale * values
        if c.uses_memory and features is not None:
            out = out + (c.weight_ms_per_mb * features["weight_bytes"]
                         + c.act_ms_per_mb * (features["in_bytes"] + features["out_bytes"])) / MB
        return out

    def _grid_values(self, grid: PartGrid) -> np.ndarray:
        """Corrected value of every cell of ``grid``; NaN where the table has neither an entry nor a model."""
        part = grid.part
        values = self._measured_index().lookup(family_of_part(part), grid.codes())
        missing = np.isnan(values)
        model = self.models.get(model_key(part))
        if missing.any() and model is not None:
            values = np.where(missing, model.predict(grid.features, grid.shape), values)
        needs_features = self.correction.uses_memory
        return self._corrected(values, grid.features if needs_features else None)

    def part_value(self, layout: Layout, part: Part, size: int, channels: tuple[int, ...]) -> float:
        """Uncorrected value (ms) of one part: its measured entry, else its model's prediction."""
        key = part.key(size, channels)
        value = self.entries.get(key)
        if value is not None:
            return value
        model = self.models.get(model_key(part))
        if model is None:
            raise self._missing(layout, key, part.name)
        return float(model.predict(part_features(part, size, channels)))

    def predict(self, layout: Layout, subnet: Subnet) -> float:
        """Predicted latency of ``subnet`` in milliseconds."""
        if self.method == "fitted":
            self._check_in_space(np.array([subnet.resolution]), np.array(subnet.widths))
        channels = layout.group_channels(subnet.widths)
        sizes = block_input_sizes(layout, subnet.resolution)
        total = self.overhead_ms
        for part in layout_parts(layout):
            value = self.part_value(layout, part, sizes[part.position], channels)
            features = part_features(part, sizes[part.position], channels) if self.correction.uses_memory else None
            total += float(self._corrected(np.asarray(value), features))
        return total

    def predict_arrays(self, layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Predicted latencies (ms) of many subnets: resolutions ``[n]``, multipliers ``[n, groups]``.

        Each block's latency depends on the resolution and one to three groups' channels, which
        take only a few distinct values; each block's values are computed on a small dense grid
        indexed by those values' positions (measured entries found by a sorted search, the rest
        from the block's model).
        """
        widths = np.asarray(widths, dtype=np.float64)
        res = np.asarray(resolutions, dtype=np.int64)
        if widths.ndim != 2 or widths.shape[1] != len(layout.base_channels) or res.shape != widths.shape[:1]:
            raise ValueError(f"need resolutions [n] and widths [n, {len(layout.base_channels)}], "
                             f"got {res.shape} and {widths.shape}")
        total = np.full(res.shape[0], self.overhead_ms)
        if res.size == 0:
            return total
        self._check_in_space(res, widths)
        channels = layout.group_channels_array(widths)
        res_values, res_index = _compact(res)
        coded = [_compact(c) for c in channels]  # (distinct values, index of each subnet's value)
        sizes = [block_input_sizes(layout, int(r)) for r in res_values]
        for part in layout_parts(layout):
            grid = PartGrid(part, np.array([s[part.position] for s in sizes]), {g: coded[g][0] for g in part.groups})
            index = (res_index,) + tuple(coded[g][1] for g in part.groups)
            values = self._grid_values(grid)[index]
            if np.isnan(values).any():
                row = int(np.flatnonzero(np.isnan(values))[0])
                raise self._missing(layout, grid.key([int(i[row]) for i in index]), part.name)
            total += values
        return total

    # ---------------------------------------------------------------- persistence

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "device": self.device_info,
            **{k: self.model_config.get(k) for k in ("arch", "small_input", "num_classes", "in_chans",
                                                     "resolutions", "width_range")},
            "batch": self.batch,
            "settings": self.settings,
            "complete": self.complete,
            "method": self.method,
            "overhead_ms": self.overhead_ms,
            "correction": self.correction.to_dict(),
            "build": self.build,
            "models": {k: m.to_dict() for k, m in sorted(self.models.items())},
            "subnets": [t.to_dict() for t in self.timings],
            "entries": dict(sorted(self.entries.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "LatencyTable":
        """A table from its JSON form (``pssnet-lut/2``, or ``/1`` read as before); every field is
        checked (present, typed, finite, in range) and a damaged table is a :class:`UserError`
        naming ``source`` and the field."""
        where = source or "latency table"
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        if found not in (FORMAT, FORMAT_V1):
            raise UserError(f"{where} is not a {FORMAT} table (format {found!r}): build one with pssnet lut build")
        try:
            fields = _checked_fields(data)
            if found == FORMAT:
                fields.update(_checked_v2_fields(data))
            return cls(**fields, source=source)
        except FieldError as exc:
            raise UserError(f"{where} is a damaged latency table ({exc}): rebuild it with pssnet lut build") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON, atomically (temporary file in the same folder, then rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatencyTable":
        path = pathlib.Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"latency table {path} does not exist: build it with pssnet lut build -o {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read latency table {path} ({exc}): rebuild it with pssnet lut build") from None
        return cls.from_dict(data, source=str(path))


def load_tables(paths: Iterable[str | os.PathLike]) -> dict[str, LatencyTable]:
    """The tables at ``paths`` (``--lut`` files) by the latency kind each serves (``latency_cpu``,
    ``latency_gpu``: by the device it was measured on); two for one kind is a UserError."""
    tables: dict[str, LatencyTable] = {}
    for path in paths:
        table = LatencyTable.load(path)
        kind = latency_kind_for(table.device)
        if kind in tables:
            raise UserError(f"two latency tables for {kind} given; pass one --lut per device")
        tables[kind] = table
    return tables


def _checked_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of a table's JSON form that every version has, each checked."""
    device = schema.mapping(schema.require(data, "device"), "device")
    if device.get("type") not in LATENCY_DEVICES.values():
        raise FieldError(f"field 'device.type' must be one of {', '.join(sorted(LATENCY_DEVICES.values()))}, "
                         f"got {device.get('type')!r}")
    resolutions = schema.require(data, "resolutions")
    if resolutions is not None:
        resolutions = [schema.integer(v, f"resolutions[{i}]", low=1)
                       for i, v in enumerate(schema.sequence(resolutions, "resolutions", 3))]
    config = {
        "arch": schema.string(schema.require(data, "arch"), "arch"),
        "small_input": schema.boolean(schema.require(data, "small_input"), "small_input"),
        "num_classes": schema.integer(schema.require(data, "num_classes"), "num_classes", low=1),
        "in_chans": schema.integer(schema.require(data, "in_chans"), "in_chans", low=1),
        "resolutions": resolutions,
        "width_range": [schema.number(v, f"width_range[{i}]", low=0.0, low_open=True) for i, v in
                        enumerate(schema.sequence(schema.require(data, "width_range"), "width_range", 2))],
    }
    entries = schema.mapping(schema.require(data, "entries"), "entries")
    return {
        # A block's latency is a duration: finite and non-negative.
        "entries": {k: schema.number(v, f"entries[{k!r}]", low=0.0) for k, v in entries.items()},
        "device_info": device,
        "model_config": config,
        "batch": schema.integer(schema.require(data, "batch"), "batch", low=1),
        "settings": schema.mapping(data.get("settings", {}), "settings"),
        "complete": schema.boolean(data.get("complete", True), "complete"),
        # Calibrated as a median difference: may be slightly negative, never infinite.
        "overhead_ms": schema.number(data.get("overhead_ms", 0.0), "overhead_ms"),
    }


def _checked_v2_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """What ``pssnet-lut/2`` adds: method, block models, correction, whole-subnet timings, build record."""
    method = schema.string(data.get("method", "exhaustive"), "method")
    if method not in METHODS:
        raise FieldError(f"field 'method' must be one of {', '.join(METHODS)}, got {method!r}")
    models = schema.mapping(data.get("models", {}), "models")
    timings = schema.sequence(data.get("subnets", []), "subnets")
    return {
        "method": method,
        "models": {str(k): BlockModel.from_dict(schema.mapping(v, f"models[{k!r}]"), f"models[{k!r}]")
                   for k, v in models.items()},
        "correction": Correction.from_dict(schema.mapping(data.get("correction", {"form": "offset", "scale": 1.0}),
                                                          "correction")),
        "timings": [SubnetTiming.from_dict(schema.mapping(t, f"subnets[{i}]"), f"subnets[{i}]")
                    for i, t in enumerate(timings)],
        "build": schema.mapping(data.get("build", {}), "build"),
    }


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) for small non-negative ints, in O(n)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return values, values
    present = np.zeros(int(values.max()) + 1, dtype=bool)
    present[values] = True
    position = np.cumsum(present) - 1
    return np.flatnonzero(present), position[values]
