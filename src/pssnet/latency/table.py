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

Every table read is checked before use (:meth:`LatencyTable.from_dict`): the file's size is
bounded before it is read, its nesting depth before its fields are, its space by the bounds of
a bundle's ``model_config`` (:class:`~pssnet.supernet_config.SupernetConfig`), and every term of
a prediction is non-negative, so no subnet is predicted a negative latency. A run checks that
its tables cover its search space (:func:`load_tables`) before it starts.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Iterable, Mapping, Optional

import numpy as np

from .. import schema
from ..errors import UserError
from ..fileio import write_text_atomic
from ..layout import Layout
from ..resources import LATENCY_DEVICES, latency_kind_for
from ..schema import FieldError
from ..space import Subnet
from ..supernet_config import SupernetConfig
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
# The largest file read as a table. Real ones are far smaller: a fitted ResNet-50 table (86 whole
# subnets) is 0.11 MB, an exhaustive one of its whole ImageNet space (340,144 entries, half a
# day of measuring) 35 MB. A multi-GB file is refused before it is read.
MAX_TABLE_BYTES = 128 << 20
# Nesting depth of a table's JSON: real ones reach 5 (subnets -> timing -> subnet -> widths).
MAX_DEPTH = 16


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
            try:
                self._index = (stamp, MeasuredIndex(self.entries))
            except FieldError as exc:  # keys are parsed here, at first use, not on every read
                raise UserError(f"{self.source or 'latency table'} is a damaged latency table ({exc}): "
                                "rebuild it with pssnet lut build") from None
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

    def _finite(self, total: np.ndarray) -> np.ndarray:
        """``total``, refused when a table with absurd (finite) values overflowed it to infinity."""
        if not np.isfinite(total).all():
            raise UserError(f"{self.source or 'latency table'} is a damaged latency table (it predicts an infinite "
                            "latency: an entry, a model or the correction is absurdly large): rebuild it with "
                            "pssnet lut build")
        return total

    def predict(self, layout: Layout, subnet: Subnet) -> float:
        """Predicted latency of ``subnet`` in milliseconds."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflows are refused by _finite
            return float(self._finite(np.asarray(self._predict(layout, subnet))))

    def _predict(self, layout: Layout, subnet: Subnet) -> float:
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
        """Predicted latencies (ms) of many subnets: resolutions ``[n]``, multipliers ``[n, groups]``
        (see :meth:`_predict_arrays`)."""
        with np.errstate(over="ignore", invalid="ignore"):  # overflows are refused by _finite
            return self._finite(self._predict_arrays(layout, resolutions, widths))

    def _predict_arrays(self, layout: Layout, resolutions: np.ndarray, widths: np.ndarray) -> np.ndarray:
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
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None,
                  allow_negative_overhead: bool = False) -> "LatencyTable":
        """A table from its JSON form (``pssnet-lut/2``, or ``/1`` read as before); every field is
        checked (present, typed, finite, in range) and a damaged table is a :class:`UserError`
        naming ``source`` and the field.

        A negative ``overhead_ms`` (older builds wrote one) could predict a negative latency and
        is refused, unless ``allow_negative_overhead``: a build resuming the table (it refits the
        correction) and the evaluation of a run that trained with it read it as it is."""
        where = source or "latency table"
        found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
        if found not in (FORMAT, FORMAT_V1):
            raise UserError(f"{where} is not a {FORMAT} table (format {found!r}): build one with pssnet lut build")
        try:
            _check_depth(data)
            fields = _checked_fields(data)
            if found == FORMAT:
                fields.update(_checked_v2_fields(data))
                _check_timings(fields["timings"], _space_of(fields["model_config"]))
        except FieldError as exc:
            raise UserError(f"{where} is a damaged latency table ({exc}): rebuild it with pssnet lut build") from None
        if fields["overhead_ms"] < 0 and not allow_negative_overhead:
            raise UserError(f"{where} has a negative overhead ({fields['overhead_ms']:g} ms), with which a subnet "
                            "could be predicted a negative latency: run the pssnet lut build command that built it "
                            "again; it keeps the measurements and refits the correction")
        return cls(**fields, source=source)

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as JSON, atomically (temporary file in the same folder, then rename)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike, allow_negative_overhead: bool = False) -> "LatencyTable":
        """The table in the JSON file at ``path`` (see :meth:`from_dict`); a missing, oversized,
        unreadable or damaged file is a one-line :class:`UserError` naming it."""
        path = pathlib.Path(path)
        try:
            text = _read_bounded(path)
            data = json.loads(text)
        except FileNotFoundError:
            raise UserError(f"latency table {path} does not exist: build it with pssnet lut build -o {path}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read latency table {path} ({exc}): rebuild it with pssnet lut build") from None
        except (RecursionError, ValueError) as exc:  # nested too deeply; an integer beyond Python's digit limit
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise UserError(f"{path} is a damaged latency table ({reason}): rebuild it with pssnet lut build") from None
        return cls.from_dict(data, source=str(path), allow_negative_overhead=allow_negative_overhead)

    def space_config(self) -> SupernetConfig:
        """The architecture and search space the table was built for (its ``model_config``)."""
        return _space_of(self.model_config)

    def check_covers(self, config: SupernetConfig) -> None:
        """Refuse (one line naming every mismatch) a table that cannot predict every subnet of
        the space ``config`` describes: another architecture, input kind, class or channel count,
        resolutions it did not measure (an exhaustive table) or fit (a fitted one), or widths
        outside its range."""
        mismatches = _mismatches(self.space_config(), config, self.method)
        if mismatches:
            name = f"latency table {self.source}" if self.source else "the latency table"
            raise UserError(f"{name} does not cover this run's search space ({'; '.join(mismatches)}): "
                            f"build one for it with `{_build_command(config, self.device)}`")


def load_tables(paths: Iterable[str | os.PathLike], config: Optional[SupernetConfig] = None) -> dict[str, LatencyTable]:
    """The tables at ``paths`` (``--lut`` files) by the latency kind each serves (``latency_cpu``,
    ``latency_gpu``: by the device it was measured on); two for one kind is a UserError, and so
    (with ``config``, the run's model) is a table that does not cover its search space."""
    tables: dict[str, LatencyTable] = {}
    for path in paths:
        table = LatencyTable.load(path)
        if config is not None:
            table.check_covers(config)
        kind = latency_kind_for(table.device)
        if kind in tables:
            raise UserError(f"two latency tables for {kind} given; pass one --lut per device")
        tables[kind] = table
    return tables


def _read_bounded(path: pathlib.Path) -> str:
    """The text of ``path``, refused (before reading, where its size is known) above MAX_TABLE_BYTES."""
    limit = f"{MAX_TABLE_BYTES >> 20} MiB, more than any latency table pssnet writes"
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size > MAX_TABLE_BYTES:
            raise UserError(f"latency table {path} is {size / 2**20:,.0f} MiB, larger than {limit}: "
                            "it is no latency table; build one with pssnet lut build")
        data = file.read(MAX_TABLE_BYTES + 1)  # a device or pipe has no size
    if len(data) > MAX_TABLE_BYTES:
        raise UserError(f"latency table {path} holds more than {limit}: it is no latency table; "
                        "build one with pssnet lut build")
    return data.decode("utf-8")


def _check_depth(data: Any) -> None:
    """Refuse JSON nested deeper than MAX_DEPTH (walked without recursion): printing, hashing or
    saving a deeper value could exhaust Python's recursion limit far from the file that held it."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FieldError(f"it is nested more than {MAX_DEPTH} levels deep")
        children = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (Mapping, list, tuple)))


def _space_of(model_config: Mapping[str, Any]) -> SupernetConfig:
    """The checked :class:`SupernetConfig` of a table's ``model_config`` (a FieldError names a bad field)."""
    cfg = model_config
    resolutions = cfg.get("resolutions")
    return SupernetConfig(cfg.get("arch"), cfg.get("num_classes"), cfg.get("in_chans"), cfg.get("small_input"),
                          tuple(resolutions) if resolutions is not None else None, tuple(cfg.get("width_range") or ()))


def _mismatches(table: SupernetConfig, run: SupernetConfig, method: str) -> list[str]:
    """What of the run's space ``run`` the table built for ``table`` (by ``method``) does not cover."""
    found = [f"{key} {getattr(table, key)}, not the run's {getattr(run, key)}"
             for key in ("arch", "small_input", "num_classes", "in_chans") if getattr(table, key) != getattr(run, key)]
    measured, wanted = table.space().resolutions, run.space().resolutions
    if method == "fitted":  # block models predict between the resolutions they were fitted on
        missing = [r for r in wanted if not measured[0] <= r <= measured[-1]]
    else:
        missing = [r for r in wanted if r not in measured]
    if missing:
        low, high, step = table.resolutions
        found.append(f"resolutions {low}:{high}:{step} lack the run's {', '.join(map(str, missing[:5]))}"
                     + (", ..." if len(missing) > 5 else ""))
    (low, high), (run_low, run_high) = table.width_range, run.width_range
    if run_low < low - 1e-9 or run_high > high + 1e-9:
        found.append(f"width range {low:g}:{high:g} does not hold the run's {run_low:g}:{run_high:g}")
    return found


def _build_command(config: SupernetConfig, device: str) -> str:
    """The ``pssnet lut build`` command of a table for the space of ``config`` on ``device``."""
    (low, high, step), (w_low, w_high) = config.resolutions, config.width_range
    return (f"pssnet lut build --arch {config.arch}{' --small-input' if config.small_input else ''} "
            f"--num-classes {config.num_classes} --in-chans {config.in_chans} --resolutions {low}:{high}:{step} "
            f"--width-range {w_low:g}:{w_high:g} --device {device} -o FILE")


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
    _space_of(config)  # the bounds of a bundle's model_config: at most 2048 px, 64 channels, low <= high, ...
    entries = schema.mapping(schema.require(data, "entries"), "entries")
    return {
        # A block's latency is a duration: finite and non-negative.
        "entries": {k: schema.number(v, f"entries[{k!r}]", low=0.0) for k, v in entries.items()},
        "device_info": device,
        "model_config": config,
        "batch": schema.integer(schema.require(data, "batch"), "batch", low=1),
        "settings": schema.mapping(data.get("settings", {}), "settings"),
        "complete": schema.boolean(data.get("complete", True), "complete"),
        # Time a network pays beyond its blocks: with it >= 0 (see from_dict), no prediction is negative.
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
        "build": _checked_build(data.get("build", {})),
    }


def _check_timings(timings: Iterable[SubnetTiming], config: SupernetConfig) -> None:
    """Whole subnets timed while building are of the table's space, a time per part (a resumed
    build refits the table on them)."""
    space, parts = config.space(), len(layout_parts(config.layout()))
    for i, timing in enumerate(timings):
        try:
            space.validate(timing.subnet)
        except FieldError as exc:
            raise FieldError(f"field 'subnets[{i}].subnet' is outside the table's space ({exc})") from None
        if len(timing.parts_ms) != parts:
            raise FieldError(f"field 'subnets[{i}].parts_ms' must have {parts} items (one per part of "
                             f"{config.arch}), got {len(timing.parts_ms)}")


def _checked_build(value: Any) -> dict[str, Any]:
    """The build record, whose fields that are read back (by ``lut show`` and a resumed build) are checked."""
    build = dict(schema.mapping(value, "build"))
    if "seconds" in build:
        schema.number(build["seconds"], "build.seconds", low=0.0)
    schema.integer(build.get("space_entries"), "build.space_entries", low=0, optional=True)
    for i, pace in enumerate(schema.sequence(build.get("pace", []), "build.pace")):
        schema.number(pace, f"build.pace[{i}]", low=0.0, low_open=True)
    for i, record in enumerate(schema.sequence(build.get("rounds", []), "build.rounds")):
        where = f"build.rounds[{i}]"
        schema.integer(schema.require(schema.mapping(record, where), "subnets", where), f"{where}.subnets", low=0)
        for key in ("seconds", "block_mape", "e2e_mape", "e2e_within_10pct"):
            schema.number(schema.require(record, key, where), f"{where}.{key}", low=0.0)
    return build


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) for small non-negative ints, in O(n)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return values, values
    present = np.zeros(int(values.max()) + 1, dtype=bool)
    present[values] = True
    position = np.cumsum(present) - 1
    return np.flatnonzero(present), position[values]
