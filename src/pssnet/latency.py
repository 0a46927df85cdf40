"""Latency look-up tables measured on the user's device, and the latency predictor.

A subnet's latency is predicted as the sum of its blocks' measured latencies plus its
classifier's (average pool + linear). The key of a block entry holds everything that changes
its computation: kind, input size, in/out/mid channels, kernel, stride and a structure
signature (body convolutions, residual path, pooling). Blocks come from the architecture's one
:class:`~pssnet.layout.Layout`; measured modules are the supernet's own :class:`Block` frozen
to plain ``torch.nn`` layers at exactly the entry's channels, so nothing here re-describes a
block.

Tables are versioned JSON (``pssnet-lut/1``) with the device description, the search space
they were built for and the measurement settings. Building is resumable: the partial table is
written atomically every few entries and measured keys are skipped on restart.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import random
import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import timing
from .errors import UserError
from .fileio import write_text_atomic
from .layout import BlockSpec, ConvSpec, Layout, Width
from .space import SearchSpace, Subnet, make_divisible_array
from .supernet import Supernet, extract_subnet
from .timing import MeasureSettings

FORMAT = "pssnet-lut/1"
CLASSIFIER = "classifier"


# --------------------------------------------------------------------------- block keys


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


@dataclass(frozen=True)
class BlockConfig:
    """One distinct measurable configuration: a block at fixed channels and size, or the classifier."""

    key: str
    size: int
    in_channels: int
    block: BlockSpec | None = None  # widths resolved to constants; None for the classifier
    num_classes: int = 0
    dropout: float = 0.0


def _groups_of(widths: Iterable[Width]) -> tuple[int, ...]:
    return tuple(sorted({w.group for w in widths if w.group is not None}))


def _resolved(block: BlockSpec, channels: Mapping[int, int]) -> BlockSpec:
    """``block`` with every width replaced by its constant channel count."""
    def const(width: Width) -> Width:
        return Width.constant(int(width.resolve(channels)))

    def conv(c: ConvSpec) -> ConvSpec:
        return replace(c, in_width=const(c.in_width), out_width=const(c.out_width))

    shortcut = conv(block.shortcut) if block.shortcut is not None else None
    return replace(block, body=tuple(conv(c) for c in block.body), shortcut=shortcut)


@dataclass(frozen=True)
class _Part:
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

    def config(self, size: int, channels: Mapping[int, int]) -> BlockConfig:
        key = self.key(size, channels)
        if self.block is None:
            return BlockConfig(key, size, int(self.layout.classifier_in.resolve(channels)),
                               num_classes=self.layout.num_classes, dropout=self.layout.dropout)
        return BlockConfig(key, size, int(self.block.in_width.resolve(channels)), _resolved(self.block, channels))


def _parts(layout: Layout) -> list[_Part]:
    for index, block in enumerate(layout.blocks):
        _check_describable(block, index)
    return [_Part(layout, i, b) for i, b in enumerate(layout.blocks)] + [_Part(layout, len(layout.blocks), None)]


def subnet_keys(layout: Layout, subnet: Subnet) -> list[str]:
    """Table keys of every block of ``subnet``, then its classifier's key."""
    channels = layout.group_channels(subnet.widths)
    sizes = block_input_sizes(layout, subnet.resolution)
    return [part.key(sizes[part.position], channels) for part in _parts(layout)]


# --------------------------------------------------------------------------- enumeration


def reachable_channels(layout: Layout, space: SearchSpace) -> list[np.ndarray]:
    """Sorted distinct channel counts each group can take on the space's 0.001 multiplier grid."""
    lo, hi = round(space.min_width * 1000), round(space.max_width * 1000)
    grid = np.arange(lo, hi + 1) / 1000
    return [np.unique(make_divisible_array(base * grid)) for base in layout.base_channels]


def enumerate_configs(layout: Layout, space: SearchSpace) -> dict[str, BlockConfig]:
    """Every distinct block and classifier configuration that subnets of ``space`` can contain.

    Groups are sampled independently, so every joint assignment of a part's distinct groups
    is reachable; a block whose in and out widths share a group gets only the tied
    combinations (the product runs over groups, not over in x out).
    """
    values = reachable_channels(layout, space)
    sizes = [block_input_sizes(layout, r) for r in space.resolutions]
    configs: dict[str, BlockConfig] = {}
    for part in _parts(layout):
        part_sizes = sorted({s[part.position] for s in sizes})
        for combo in itertools.product(*(values[g].tolist() for g in part.groups)):
            channels = dict(zip(part.groups, combo))
            for size in part_sizes:
                key = part.key(size, channels)
                if key not in configs:
                    configs[key] = part.config(size, channels)
    return configs


# --------------------------------------------------------------------------- measurement


class PooledClassifier(nn.Module):
    """The tail of a static subnet: global average pool, flatten, dropout, linear."""

    def __init__(self, features: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def build_module(config: BlockConfig) -> nn.Module:
    """A standalone, eval-mode module computing exactly ``config`` with plain ``torch.nn`` layers."""
    if config.block is None:
        module: nn.Module = PooledClassifier(config.in_channels, config.num_classes, config.dropout)
    else:
        module = _static_block(config.block, config.size)
    return module.eval()


def _static_block(block: BlockSpec, size: int) -> nn.Module:
    """The supernet's own block at constant widths, extracted exactly as deployed subnets are."""
    layout = Layout(name="lut-block", group_names=("none",), base_channels=(8,), blocks=(block,),
                    classifier_in=block.out_width, num_classes=1, in_chans=int(block.in_width.fixed))
    space = SearchSpace(("none",), size, size, 1, 1.0, 1.0)
    return extract_subnet(Supernet(layout, space), space.largest()).features[0]


def config_call(config: BlockConfig, settings: MeasureSettings) -> Callable[[], object]:
    """A function running ``config``'s module once on a random input on the settings' device."""
    device = torch.device(settings.device)
    module = build_module(config).to(device)
    x = torch.randn(settings.batch, config.in_channels, config.size, config.size, device=device)
    return lambda: module(x)



# --------------------------------------------------------------------------- the table


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
        for part, key in zip(_parts(layout), subnet_keys(layout, subnet)):
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
        channels = [make_divisible_array(base * widths[:, g]) for g, base in enumerate(layout.base_channels)]
        res_values, res_index = _compact(res)
        coded = [_compact(c) for c in channels]  # (distinct values, index of each subnet's value)
        sizes = [block_input_sizes(layout, int(r)) for r in res_values]
        total = np.full(res.shape[0], self.overhead_ms)
        for part in _parts(layout):
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
        where = source or "latency table"
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise UserError(f"{where} is not a {FORMAT} table (format {found!r}): build one with pssnet lut build")
        try:
            device = dict(data["device"])
            if device.get("type") not in ("cpu", "cuda"):
                raise ValueError(f"device type {device.get('type')!r}")
            config = {k: data[k] for k in ("arch", "small_input", "num_classes", "in_chans",
                                           "resolutions", "width_range")}
            return cls(data["entries"], device, config, int(data["batch"]), data.get("settings", {}),
                       bool(data.get("complete", True)), float(data.get("overhead_ms", 0.0)), source)
        except (KeyError, TypeError, ValueError) as exc:
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


def _compact(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, index of each value among them) for small non-negative ints, in O(n)."""
    values = np.asarray(values, dtype=np.int64)
    if values.size == 0:
        return values, values
    present = np.zeros(int(values.max()) + 1, dtype=bool)
    present[values] = True
    position = np.cumsum(present) - 1
    return np.flatnonzero(present), position[values]


# --------------------------------------------------------------------------- building


def _compatible(table: LatencyTable, model_config: Mapping[str, Any], settings: MeasureSettings) -> str | None:
    """Why an existing partial table cannot be resumed with these settings (None if it can)."""
    if table.device != settings.device:
        return f"it was measured on {table.device}"
    if table.batch != settings.batch:
        return f"it was measured at batch {table.batch}"
    if settings.device == "cpu" and table.device_info.get("threads") != torch.get_num_threads():
        return f"it was measured with {table.device_info.get('threads')} CPU threads"
    for key in ("arch", "small_input", "num_classes", "in_chans"):
        if table.model_config.get(key) != model_config.get(key):
            return f"it is for {key}={table.model_config.get(key)!r}"
    return None


def calibration_subnets(space: SearchSpace, count: int = 7) -> list[Subnet]:
    """The subnets whose end-to-end latency calibrates a table's per-network overhead:
    the smallest, a middle and the largest one, and seeded random ones up to ``count``."""
    middle = (space.min_width + space.max_width) / 2
    res = space.resolutions
    subnets = [space.smallest(), Subnet(res[len(res) // 2], (middle,) * space.num_stages), space.largest()]
    rng = random.Random(0)
    for _ in range(100 * count):  # tiny spaces may hold fewer distinct subnets than ``count``
        if len(subnets) >= count:
            break
        s = space.sample(rng)
        if s not in subnets:
            subnets.append(s)
    return subnets


def calibrate_overhead(net: Supernet, table: LatencyTable, settings: MeasureSettings) -> float:
    """Median over :func:`calibration_subnets` of (end-to-end latency - sum of block entries), ms.

    Timed exactly like the entries, on the extracted static subnets at their own resolution.
    """
    table.overhead_ms = 0.0
    subnets = calibration_subnets(net.space)
    device = torch.device(settings.device)
    calls = {}
    for s in subnets:
        model = extract_subnet(net, s).eval().to(device)
        x = torch.randn(settings.batch, net.layout.in_chans, s.resolution, s.resolution, device=device)
        calls[s.key] = lambda model=model, x=x: model(x)
    measured = timing.time_calls_ms(calls, settings)
    return float(statistics.median(measured[s.key] - table.predict(net.layout, s) for s in subnets))


def build_table(net: Supernet, settings: MeasureSettings, path: str | os.PathLike | None = None,
                force: bool = False, save_every: int = 40, progress: bool = True,
                raw_samples: dict[str, list[float]] | None = None) -> LatencyTable:
    """Measure every block configuration of ``net``'s search space on ``settings.device``.

    With ``path``, the partial table is saved after every ``save_every`` entries;
    an existing compatible table at ``path`` is resumed (its entries are kept) unless ``force``.
    CPU threads are set for the build and restored afterwards. ``raw_samples``, if given,
    receives every measured entry's timed samples (ms).
    """
    from tqdm.auto import tqdm

    config = getattr(net, "config", None) or {"arch": net.layout.name, "num_classes": net.layout.num_classes,
                                               "in_chans": net.layout.in_chans}
    configs = enumerate_configs(net.layout, net.space)
    previous_threads = torch.get_num_threads()
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    try:
        entries: dict[str, float] = {}
        if path is not None and pathlib.Path(path).exists() and not force:
            old = LatencyTable.load(path)
            reason = _compatible(old, config, settings)
            if reason:
                raise UserError(f"{path} exists but cannot be resumed ({reason}): pass --force to rebuild it "
                                "or choose another -o")
            entries = dict(old.entries)
        table = LatencyTable(entries, timing.describe_device(settings), config, settings.batch, settings.to_dict(),
                             complete=False, source=str(path) if path is not None else None)
        pending = [c for key, c in configs.items() if key not in table.entries]
        bar = tqdm(total=len(pending) * settings.rounds, desc="measuring blocks", unit="timing",
                   disable=not progress or not pending)
        try:
            # Chunks bound the work lost to an interruption; rounds run within a chunk.
            for start in range(0, len(pending), save_every):
                chunk = pending[start:start + save_every]
                calls = {c.key: config_call(c, settings) for c in chunk}
                samples = timing.time_calls(calls, settings, on_round=bar.update)
                table.entries.update({key: timing.summarize(v, settings.statistic) for key, v in samples.items()})
                if raw_samples is not None:
                    raw_samples.update(samples)
                if path is not None:
                    table.save(path)
            table.complete = all(key in table.entries for key in configs)
            if table.complete:
                table.overhead_ms = calibrate_overhead(net, table, settings)
        finally:
            bar.close()
            if path is not None:
                table.save(path)
        return table
    finally:
        torch.set_num_threads(previous_threads)
