"""Static export: one subnet as a standalone ``pt``, TorchScript, ONNX or ``torch.export`` file, and
running it back."""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import torch

from ..errors import UserError, exception_line
from ..fileio import atomic_write, load_plain, make_dirs, save_atomic, write_bytes_atomic, write_text_atomic
from ..space import Subnet
from ..supernet import StaticSubnet, Supernet, extract_subnet
from ..supernet_config import SupernetConfig

if TYPE_CHECKING:
    from .adaptive import AdaptiveNet
    from .bundle import RetainedSubnet

STATIC_FORMAT = "pssnet-static/1"
INDEX_FORMAT = "pssnet-export-index/1"
INDEX_NAME = "index.json"
EXPORT_FORMATS = ("pt", "torchscript", "onnx", "exported")
SUFFIXES = {"pt": ".pt", "torchscript": ".ts", "onnx": ".onnx", "exported": ".pt2"}


def example_input(model_config: Mapping[str, Any], image_size: Optional[int], batch: int = 1) -> torch.Tensor:
    """A random input as the deployed model receives it (data image size, else max resolution)."""
    size = image_size or model_config["resolutions"][1]
    return torch.randn(batch, model_config["in_chans"], size, size)


def export_static(static: StaticSubnet, path: Union[str, os.PathLike], fmt: str,
                  example: torch.Tensor, meta: Mapping[str, Any]) -> None:
    """Write ``static`` as ``pt`` (weights_only dict, see :func:`load_static`), ``torchscript``,
    ``onnx`` (the dynamo-based exporter, dynamic batch) or ``exported`` (a ``torch.export``
    program, ``.pt2``, dynamic batch); inputs are shaped like ``example``."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    static = static.eval()
    if fmt == "pt":
        save_atomic({"format": STATIC_FORMAT, **dict(meta), "state_dict": static.state_dict()}, path)
    elif fmt == "torchscript":
        # Serialised in memory first: torch's C++ file writer aborts the process on a full disk.
        buffer = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still widely deployed
            torch.jit.save(torch.jit.script(static), buffer)
        write_bytes_atomic(path, buffer.getvalue())
    elif fmt == "exported":
        buffer = io.BytesIO()
        torch.export.save(_exported_program(static, example), buffer)
        write_bytes_atomic(path, buffer.getvalue())
    else:
        _check_onnx_installed()
        program = _onnx_program(static, example)
        atomic_write(path, lambda tmp: program.save(tmp, external_data=False))


def _batch_dim() -> tuple[dict[int, Any]]:
    """The dynamic shapes of the single input: any batch size."""
    return ({0: torch.export.Dim("batch", min=1)},)


def _exported_program(static: StaticSubnet, example: torch.Tensor) -> "torch.export.ExportedProgram":
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.export.export(static, (example,), dynamic_shapes=_batch_dim())


def _onnx_program(static: StaticSubnet, example: torch.Tensor) -> Any:
    """The ONNX model of ``static`` by the dynamo-based exporter that PyTorch recommends, or by
    the TorchScript-based one (said in a note) where the dynamo one fails."""
    names = {"input_names": ["input"], "output_names": ["logits"]}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            return torch.onnx.export(static, (example,), dynamo=True, dynamic_shapes=_batch_dim(), verbose=False,
                                     **names)
        except Exception as exc:  # the exporter's many failure types; the older exporter may still work
            reason = exception_line(exc)
    print(f"note: the dynamo-based ONNX exporter failed ({reason}); used the TorchScript-based one",
          file=sys.stderr)
    return _TorchScriptOnnx(static, example, names)


class _TorchScriptOnnx:
    """The TorchScript-based exporter behind :meth:`save`, like the dynamo exporter's program."""

    def __init__(self, static: StaticSubnet, example: torch.Tensor, names: Mapping[str, list[str]]) -> None:
        self.static, self.example, self.names = static, example, names

    def save(self, path: str, external_data: bool = False) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(self.static, (self.example,), path, dynamo=False, opset_version=17, **self.names,
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def _check_onnx_installed() -> None:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes the model through it)
    except ImportError:
        raise UserError("exporting ONNX needs onnx: pip install 'pssnet[export]'") from None


def load_static(path: Union[str, os.PathLike]) -> StaticSubnet:
    """Load a ``pt`` export: rebuilds the subnet's structure and loads its sliced weights."""
    data = load_plain(path, "static subnet", STATIC_FORMAT, "export one with pssnet export BUNDLE --format pt")
    net = Supernet(SupernetConfig.from_dict(data["model_config"]))  # a retired layout: one line
    static = extract_subnet(net, Subnet.from_dict(data["subnet"]))
    static.load_state_dict(data["state_dict"])
    return static.eval()


def run_export(path: Union[str, os.PathLike], fmt: str, example: torch.Tensor) -> torch.Tensor:
    """Outputs of an exported file on ``example``, run by the format's own runtime."""
    if fmt == "pt":
        with torch.no_grad():
            return load_static(path)(example)
    if fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")(example)
    if fmt == "exported":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return torch.export.load(str(path)).module()(example)
    try:
        import onnxruntime
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: pip install 'pssnet[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": example.numpy()})[0])


def static_meta(adaptive: AdaptiveNet, retained: RetainedSubnet) -> dict[str, Any]:
    """What a ``pt`` export stores besides the weights: model config, subnet, resources, accuracy."""
    return {"model_config": adaptive.info.get("model_config") or adaptive.net.config.to_dict(),
            "subnet": retained.subnet.to_dict(), "resources": dict(retained.resources), "test_acc": retained.test_acc}


def export_checked(adaptive: AdaptiveNet, retained: RetainedSubnet, path: Union[str, os.PathLike], fmt: str,
                   example: torch.Tensor) -> float:
    """Export one kept subnet and run the written file in its own runtime on ``example``; return
    the largest absolute difference from eager PyTorch."""
    static = adaptive.export(retained)
    export_static(static, path, fmt, example, static_meta(adaptive, retained))
    with torch.no_grad():
        return (run_export(path, fmt, example) - static(example)).abs().max().item()


def export_all(adaptive: AdaptiveNet, directory: Union[str, os.PathLike], fmt: str, example: torch.Tensor,
               source: str = "") -> dict[str, Any]:
    """Every kept subnet as one ``fmt`` file in ``directory`` (named by its key), each checked
    against PyTorch, and ``index.json``: per file the subnet, its resources and accuracies, what
    evaluation kept it for, and the budget ranges it serves (``fit_budget(kind=v)`` picks it for
    ``low <= v < high``; ``high`` null: no upper end). Returns the index."""
    directory = make_dirs(directory)
    ranges = {kind: adaptive.budget_ranges(kind) for kind in adaptive.kinds}
    entries = []
    for retained in sorted(adaptive.subnets, key=lambda r: (r.resources.get("flops", 0.0), r.key)):
        name = f"{retained.key}{SUFFIXES[fmt]}"
        diff = export_checked(adaptive, retained, directory / name, fmt, example)
        serves = {kind: [[low, high] for low, high, r in kinds if r is retained] for kind, kinds in ranges.items()}
        entries.append({"file": name, "key": retained.key, "subnet": retained.subnet.to_dict(),
                        "labels": list(retained.labels), "resources": dict(retained.resources),
                        "holdout_acc": retained.holdout_acc, "test_acc": retained.test_acc,
                        "serves": {kind: spans for kind, spans in serves.items() if spans},
                        "max_abs_diff_vs_pytorch": diff})
    index = {"format": INDEX_FORMAT, "source": source, "export_format": fmt,
             "model_config": static_meta(adaptive, adaptive.current)["model_config"],
             "input_shape": ["batch", *example.shape[1:]], "preprocessing": adaptive.info.get("preprocessing"),
             "subnets": entries}
    write_text_atomic(directory / INDEX_NAME, json.dumps(index, indent=1) + "\n")
    return index
