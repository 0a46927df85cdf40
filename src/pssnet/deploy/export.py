"""Static export: one subnet as a standalone ``pt``, TorchScript or ONNX file, and running it back."""

from __future__ import annotations

import os
import warnings
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import UserError
from ..fileio import atomic_write, load_plain, save_atomic
from ..space import Subnet
from ..supernet import StaticSubnet, Supernet, extract_subnet
from ..supernet_config import SupernetConfig

STATIC_FORMAT = "pssnet-static/1"
EXPORT_FORMATS = ("pt", "torchscript", "onnx")


def example_input(model_config: Mapping[str, Any], image_size: Optional[int], batch: int = 1) -> torch.Tensor:
    """A random input as the deployed model receives it (data image size, else max resolution)."""
    size = image_size or model_config["resolutions"][1]
    return torch.randn(batch, model_config["in_chans"], size, size)


def export_static(static: StaticSubnet, path: Union[str, os.PathLike], fmt: str,
                  example: torch.Tensor, meta: Mapping[str, Any]) -> None:
    """Write ``static`` as ``pt`` (weights_only dict, see :func:`load_static`), ``torchscript``
    or ``onnx`` (opset 17, dynamic batch; expects inputs shaped like ``example``)."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of {', '.join(EXPORT_FORMATS)}")
    static = static.eval()
    if fmt == "pt":
        data = {"format": STATIC_FORMAT, **dict(meta), "state_dict": static.state_dict()}
        save_atomic(data, path)
    elif fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, still widely deployed
            scripted = torch.jit.script(static)
        atomic_write(path, lambda tmp: scripted.save(tmp))
    else:
        _check_onnx_installed()

        def write_onnx(tmp: str) -> None:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(static, (example,), tmp, dynamo=False, opset_version=17,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        atomic_write(path, write_onnx)


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
    try:
        import onnxruntime
    except ImportError:
        raise UserError("checking an ONNX export needs onnxruntime: pip install 'pssnet[export]'") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": example.numpy()})[0])
