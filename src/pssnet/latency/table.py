"""Latency look-up tables measured on the user's device, and the latency predictor.

A subnet's latency is predicted as the sum of its blocks' measured latencies plus its
classifier's (average pool + linear), plus a per-network overhead calibrated when the table
was built. Tables are versioned JSON (``pssnet-lut/1``) with the device description, the
search space they were built for and the measurement settings.
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
from ..schema import FieldError
from ..layout import Layout
from ..resources import LATENCY_DEVICES, latency_kind_for
from ..space import Subnet
from .keys import block_input_sizes, layout_parts, subnet_keys

FORMAT = "pssnet-lut/1"


class LatencyTable:
    """Measured per-block latencies (ms) on one device; predicts subnet latency by summation."""

    def __init__(self, entries: Mapping[str, float], device_info: Mapping[str, Any],
                 model_config: Mapping[str, Any], batch: int = 1, settings: Mapping[str, Any] | None = None,
                 complete: bool = True, overhead_ms: float = 0.0, source: str | None = None) -> None:
        self.entries = {str(k): float(v) for k, v in entries.items()}
        self.device_info = dict(device_info)
        self.model_config = dict(model_config)
        self.batch = int(batch)
        self.settings = dict(settings or {})
        self.complete = complete
        # Per-network time outside every block (module traversal, caches refilled between
        # blocks), calibrated at build time on a few whole subnets; added to every prediction.
        self.overhead_ms = float(overhead_ms)
        self.source = source  # file it came from, for error messages

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

    def predict(self, layout: Layout, subnet: Subnet) -> float:
        """Predicted latency of ``subnet`` in milliseconds."""
        total = self.overhead_ms
        for part, key in zip(layout_parts(layout), subnet_keys(layout, subnet)):
            value = self.entries.get(key)
            if value is None:
                raise self._missing(layout, key, part.name)
            total += value
        return total

    def predict_arrays(self, layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """Predicted latencies (ms) of many subnets: resolutions ``[n]``, multipliers ``[n, groups]``.

        Each block's latency depends on the resolution and one to three groups' channels, which
        take only a few distinct values; each block's entries are gathered from a small dense
        array indexed by those values' positions.
        """
        widths = np.asarray(widths, dtype=np.float64)
        res = np.asarray(resolutions, dtype=np.int64)
        if widths.ndim != 2 or widths.shape[1] != len(layout.base_channels) or res.shape != widths.shape[:1]:
            raise ValueError(f"need resolutions [n] and widths [n, {len(layout.base_channels)}], "
                             f"got {res.shape} and {widths.shape}")
        channels = layout.group_channels_array(widths)
        res_values, res_index = _compact(res)
        coded = [_compact(c) for c in channels]  # (distinct values, index of each subnet's value)
        sizes = [block_input_sizes(layout, int(r)) for r in res_values]
        total = np.full(res.shape[0], self.overhead_ms)
        for part in layout_parts(layout):
            shape = (len(res_values),) + tuple(len(coded[g][0]) for g in part.groups)
            dense, keys = np.full(shape, np.nan), {}
            for cell in np.ndindex(*shape):
                ch = {g: int(coded[g][0][i]) for g, i in zip(part.groups, cell[1:])}
                keys[cell] = part.key(sizes[cell[0]][part.position], ch)
                dense[cell] = self.entries.get(keys[cell], np.nan)
            index = (res_index,) + tuple(coded[g][1] for g in part.groups)
            values = dense[index]
            if np.isnan(values).any():
                row = int(np.flatnonzero(np.isnan(values))[0])
                raise self._missing(layout, keys[tuple(int(i[row]) for i in index)], part.name)
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
            "overhead_ms": self.overhead_ms,
            "entries": dict(sorted(self.entries.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> "LatencyTable":
        """A table from its JSON form; every field is checked (present, typed, finite, in
        range) and a damaged table is a :class:`UserError` naming ``source`` and the field."""
        where = source or "latency table"
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise UserError(f"{where} is not a {FORMAT} table (format {found!r}): build one with pssnet lut build")
        try:
            return cls(**_checked_fields(data), source=source)
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
    """The constructor arguments of a table's JSON form, each field checked."""
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


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) for small non-negative ints, in O(n)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return values, values
    present = np.zeros(int(values.max()) + 1, dtype=bool)
    present[values] = True
    position = np.cumsum(present) - 1
    return np.flatnonzero(present), position[values]
