"""The bundle as a Hugging Face Hub-style folder: ``config.json``, ``model.safetensors`` and a
``README.md`` model card (plus ``pareto.png`` when there is one). No pickle anywhere.

``config.json`` holds the plain-data part of a bundle (model config, kept subnets with their
resources and accuracies, preprocessing, latency tables with their device descriptions, how
the run was trained) and the format version. ``model.safetensors`` holds the supernet weights as
``supernet.<name>`` and each kept subnet's BatchNorm statistics as
``subnets.<i>.<bn>.running_mean`` / ``.running_var`` (``i``: the subnet's place in
``config.json``'s ``subnets``). Reading a folder turns it back into the bundle dict of
``adaptive.pt``, so both forms go through one validation (:func:`~pssnet.deploy.bundle.unpack_bundle`).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

import torch

from ..errors import UserError, exception_line
from ..fileio import make_dirs, output_dir, write_bytes_atomic, write_text_atomic
from ..schema import FieldError
from .bundle import BUNDLE_FORMAT, damaged
from .bundle_checks import check_tensor_shapes, expected_state_shapes, model_config
from .model_card import model_card

FOLDER_FORMAT = "pssnet-adaptive-folder/1"
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, PLOT_NAME = "config.json", "model.safetensors", "README.md", "pareto.png"
FOLDER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME, PLOT_NAME)
HUB_EXTRA = "pip install 'pssnet[hub]'"
MAX_CONFIG_BYTES = 64 << 20  # config.json: a few kB, or a few MB with latency tables
_CONFIG_KEYS = ("model_config", "subnets", "preprocessing", "image_size", "data", "constraints", "sampler",
                "select_on", "luts", "training")
_BN_PARTS = (("mean", "running_mean"), ("var", "running_var"))


def safetensors_torch():
    """``safetensors.torch``, or a one-line error naming the ``hub`` extra."""
    try:
        import safetensors.torch
    except ImportError:
        raise UserError(f"Hub folders (config.json + model.safetensors) need safetensors: {HUB_EXTRA}") from None
    return safetensors.torch


def is_folder(path: Union[str, os.PathLike]) -> bool:
    return Path(path).is_dir()


# ---------------------------------------------------------------- writing


def folder_tensors(bundle: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` for a bundle dict (float32, CPU, contiguous)."""
    tensors = {f"supernet.{name}": _plain(t) for name, t in bundle["state_dict"].items()}
    for bn, parts in bundle["bn_stats"].items():
        for part, stored in _BN_PARTS:
            for slot, row in enumerate(parts[part]):
                tensors[f"subnets.{slot}.{bn}.{stored}"] = _plain(row)
    return tensors


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.is_floating_point() else tensor).contiguous()


def folder_config(bundle: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a bundle dict (fixed key order, so that equal bundles give equal files)."""
    subnets = [{"subnet": e["subnet"], "labels": list(e["labels"]), "resources": dict(e["resources"]),
                "holdout_acc": e["holdout_acc"], "test_acc": e["test_acc"]} for e in bundle["subnets"]]
    config = {"format": FOLDER_FORMAT, "library_name": "pssnet"}
    config.update({key: bundle.get(key) for key in _CONFIG_KEYS})
    config["subnets"] = subnets
    return config


def save_folder(bundle: Mapping[str, Any], directory: Union[str, os.PathLike],
                plot: Optional[Union[str, os.PathLike]] = None, flag: str = "-o") -> Path:
    """Write a bundle dict as a Hub folder at ``directory`` (``plot``: a ``pareto.png`` to copy
    in and show in the card). ``directory`` must be new, empty or a Hub folder already; the old
    ``config.json`` goes first and the new one comes last, so an interrupted write leaves a
    folder that refuses to load rather than a mix of two bundles."""
    st = safetensors_torch()
    directory = _writable_folder(directory, flag)
    plot_bytes = Path(plot).read_bytes() if plot is not None and Path(plot).is_file() else None
    config = folder_config(bundle)
    weights = st.save(folder_tensors(bundle), metadata={"format": FOLDER_FORMAT})
    (directory / CONFIG_NAME).unlink(missing_ok=True)
    if plot_bytes is None:
        (directory / PLOT_NAME).unlink(missing_ok=True)  # a stale plot would not match this card
    else:
        write_bytes_atomic(directory / PLOT_NAME, plot_bytes)
    write_text_atomic(directory / CARD_NAME, model_card(config, plot=plot_bytes is not None))
    write_bytes_atomic(directory / WEIGHTS_NAME, weights)
    write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=1, default=_plain_number) + "\n")
    return directory


def _plain_number(value: Any) -> Any:
    """numpy scalars (from resource counts) as the Python numbers JSON writes."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _writable_folder(directory: Union[str, os.PathLike], flag: str) -> Path:
    """``directory``, created if need be; one holding files of its own is refused (a Hub
    folder, or a clone of a Hub repository with only ``.git`` entries besides, is replaced)."""
    directory = output_dir(directory, flag)
    if directory.is_dir() and not _is_pssnet_folder(directory):
        foreign = sorted(p.name for p in directory.iterdir()
                         if p.name not in FOLDER_FILES and not p.name.startswith("."))
        if foreign:
            raise UserError(f"{flag} {directory} already holds other files ({', '.join(foreign[:3])}); "
                            "choose a new or empty directory for the Hub folder")
    return make_dirs(directory)


def _is_pssnet_folder(directory: Path) -> bool:
    try:
        return json.loads((directory / CONFIG_NAME).read_text()).get("format", "").startswith("pssnet-adaptive")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


# ---------------------------------------------------------------- reading


def load_folder(directory: Union[str, os.PathLike]) -> dict[str, Any]:
    """The bundle dict of a Hub folder: ``config.json`` and ``model.safetensors`` read without
    pickle, every tensor's name and shape checked against the model from the file headers before
    any tensor is read. One-line errors naming the folder."""
    directory = Path(directory)
    source = f"adaptive folder '{directory}'"
    config = read_folder_config(directory)
    st = safetensors_torch()
    try:
        shapes = _expected_tensors(config)
        _check_header(directory / WEIGHTS_NAME, shapes)
        tensors = st.load_file(directory / WEIGHTS_NAME)
    except FieldError as exc:
        raise damaged(source, str(exc)) from None
    except Exception as exc:  # safetensors' own error for a damaged file (a Rust-side exception type)
        raise damaged(source, f"{WEIGHTS_NAME} is unreadable: {exception_line(exc, 160)}") from None
    return _bundle_of(config, tensors)


def read_folder_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of a folder, of this format version; one-line errors."""
    hint = "write one with pssnet eval RUN_DIR (RUN_DIR/adaptive/) or pssnet export BUNDLE --format hub -o DIR"
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise UserError(f"'{directory}' has no {CONFIG_NAME}: it is not a pssnet adaptive folder, or writing "
                        f"it was interrupted; {hint}")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"larger than {MAX_CONFIG_BYTES >> 20} MiB")
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UserError(f"cannot read {path} ({exception_line(exc, 160)}); {hint}") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != FOLDER_FORMAT:
        newer = isinstance(found, str) and found.startswith(FOLDER_FORMAT.split("/")[0] + "/")
        why = (f"format {found!r}, this pssnet reads {FOLDER_FORMAT}: upgrade pssnet, or" if newer
               else f"format {found!r} is not {FOLDER_FORMAT};")
        raise UserError(f"{path} has {why} write the folder again with this version ({hint})")
    return config


def _expected_tensors(config: Mapping[str, Any]) -> Iterator[tuple[str, tuple[int, ...]]]:
    """The name and shape of every tensor ``model.safetensors`` must hold, from ``config.json``
    (lazily: the subnets' statistics slot by slot)."""
    shapes = expected_state_shapes(model_config(config.get("model_config")))
    subnets = config.get("subnets")
    if not isinstance(subnets, list) or not subnets:
        raise FieldError("field 'subnets' must be a list of the kept subnets, got "
                         + ("an empty one" if isinstance(subnets, list) else type(subnets).__name__))
    bns = [(name[: -len(".running_mean")], shape) for name, shape in shapes.items()
           if name.endswith(".bn.running_mean")]
    return itertools.chain(((f"supernet.{name}", shape) for name, shape in shapes.items()),
                           ((f"subnets.{slot}.{bn}.{stored}", shape) for slot in range(len(subnets))
                            for bn, shape in bns for _, stored in _BN_PARTS))


def _check_header(path: Path, expected: Mapping[str, tuple[int, ...]]) -> None:
    from safetensors import safe_open

    if not path.is_file():
        raise FieldError(f"{WEIGHTS_NAME} is missing")
    with safe_open(path, framework="pt") as f:
        if (f.metadata() or {}).get("format") != FOLDER_FORMAT:
            raise FieldError(f"{WEIGHTS_NAME} is not a {FOLDER_FORMAT} weights file (its metadata 'format' "
                             f"is {(f.metadata() or {}).get('format')!r})")
        found = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    check_tensor_shapes(found, expected, lambda name: f"tensor '{name}' of {WEIGHTS_NAME}")


def _bundle_of(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``adaptive.pt`` dict of a folder's (header-checked) config and tensors."""
    prefix = "supernet."
    bundle = {"format": BUNDLE_FORMAT, **{key: config.get(key) for key in _CONFIG_KEYS}}
    bundle["state_dict"] = {name[len(prefix):]: t for name, t in tensors.items() if name.startswith(prefix)}
    slots = len(config["subnets"])
    names = [name[len(prefix):-len(".running_mean")] for name in tensors
             if name.startswith(prefix) and name.endswith(".bn.running_mean")]
    bundle["bn_stats"] = {bn: {part: torch.stack([tensors[f"subnets.{slot}.{bn}.{stored}"] for slot in range(slots)])
                               for part, stored in _BN_PARTS} for bn in names}
    return bundle


# ---------------------------------------------------------------- the Hub (network)


def _huggingface_hub():
    try:
        import huggingface_hub
    except ImportError:
        raise UserError(f"loading from or pushing to the Hugging Face Hub needs huggingface_hub: {HUB_EXTRA}") from None
    return huggingface_hub


def download_snapshot(repo_id: str, **kwargs: Any) -> Path:
    """The local folder of Hub repository ``repo_id`` (``snapshot_download``: cached, only this
    format's files); a name that is neither a local path nor a reachable repository is one line."""
    hub = _huggingface_hub()
    try:
        folder = hub.snapshot_download(repo_id=repo_id, allow_patterns=list(FOLDER_FILES), **kwargs)
    except Exception as exc:  # huggingface_hub's errors: not found, no network, bad id, gated, ...
        raise UserError(f"'{repo_id}' is no local folder or file, and it could not be fetched from the "
                        f"Hugging Face Hub ({exception_line(exc, 160)})") from None
    return Path(folder)


def hub_api(token: Optional[str] = None):
    """``huggingface_hub.HfApi`` (the ``hub`` extra)."""
    return _huggingface_hub().HfApi(token=token)
