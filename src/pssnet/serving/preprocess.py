"""Request bodies to model inputs: decode a PNG/JPEG image or a ``.npy`` array, check it, and
normalise it the way the bundle's training data was normalised.

The preprocessing comes from the bundle: its ``"preprocessing"`` entry (``in_chans``,
``image_size``, ``mean``, ``std``, ``class_names``, ``crop_ratio``; written by ``pssnet eval``
from the data set), else, for bundles written before that entry existed, the model config,
image size and data spec that every bundle records. Bad bodies raise
:class:`RequestError` with the HTTP status to answer (400, 413 or 415).
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from ..data.datasets import class_names as dataset_class_names
from ..data.datasets import dataset_name, normalisation
from ..data.transforms import EVAL_CROP_FRACTION
from ..errors import UserError

IMAGE_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG"}
NPY_TYPES = ("application/x-npy", "application/npy")
SNIFFED_TYPES = ("", "application/octet-stream")  # decided by the body's first bytes
NPY_MAX_HEADER = 10_000  # numpy's own default limit on a .npy header
MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"\x93NUMPY", "application/x-npy"))


class RequestError(Exception):
    """A request the server refuses: ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input ``[in_chans, image_size, image_size]``, and the class names."""

    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    crop_ratio: Optional[float] = None  # resize to image_size / crop_ratio, then centre-crop
    max_pixels: int = 4096 * 4096  # decoded size cap (decompression bombs)
    max_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans or min(self.std) <= 0:
            raise UserError(f"the bundle's normalisation ({self.mean}, {self.std}) does not fit {self.in_chans} "
                            "input channels; fix its 'preprocessing' entry")

    def describe(self) -> str:
        return (f"{self.in_chans}x{self.image_size}x{self.image_size}, mean {self.mean}, std {self.std}, "
                f"{len(self.class_names)} classes")

    # -- decoding ------------------------------------------------------------

    def decode(self, body: bytes, content_type: Optional[str]) -> torch.Tensor:
        """The normalised float tensor ``[C, S, S]`` of a request body."""
        return self.open(body, content_type).finish()

    def open(self, body: bytes, content_type: Optional[str]) -> "Decoding":
        """Read a body's header only (image size, array shape), refusing what is over the limits;
        :meth:`Decoding.finish` then decodes it. The server uses the decoded size, not the body's,
        to decide where to decode: a 48 KB PNG can hold 4096 x 4096 pixels."""
        if not body:
            raise RequestError(400, "empty body; send a PNG or JPEG image or a .npy array")
        if len(body) > self.max_bytes:
            raise RequestError(413, f"body of {len(body)} bytes is over the limit of {self.max_bytes}")
        kind = _body_type(body, content_type)
        if kind == "application/x-npy":
            array = _load_npy(body)
            self._check_array_size(array)
            return Decoding(int(array.size), lambda: self._from_array(array))
        if self.in_chans not in (1, 3):
            raise RequestError(415, f"this model takes {self.in_chans} input channels; send a .npy array")
        image = self._open_image(body, IMAGE_TYPES[kind])
        width, height = image.size
        return Decoding(width * height, lambda: self._pixels_to_input(self._decode_image(image)))

    def _open_image(self, body: bytes, fmt: str) -> Any:
        """The PIL image of ``body``, its header read and its pixel count checked, nothing decoded."""
        from PIL import Image, UnidentifiedImageError

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(body), formats=[fmt])
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestError(413, f"image is over the limit of {self.max_pixels} pixels") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise RequestError(400, f"body is not a readable {fmt} image ({type(exc).__name__})") from None
        width, height = image.size  # from the header, before any pixel is decoded
        if width * height > self.max_pixels:
            raise RequestError(413, f"image of {width}x{height} pixels is over the limit of {self.max_pixels} pixels")
        return image

    def _decode_image(self, image: Any) -> torch.Tensor:
        from PIL import Image

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = image.convert("L" if self.in_chans == 1 else "RGB")
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise RequestError(413, f"image is over the limit of {self.max_pixels} pixels") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise RequestError(400, f"body is not a readable {image.format} image ({type(exc).__name__})") from None
        return v2.functional.pil_to_tensor(image)

    def _check_array_size(self, array: np.ndarray) -> None:
        if array.size > self.max_pixels * self.in_chans:
            raise RequestError(413, f"array of {array.size} values is over the limit of "
                                    f"{self.max_pixels * self.in_chans}")

    def _from_array(self, array: np.ndarray) -> torch.Tensor:
        self._check_array_size(array)
        if array.dtype == np.uint8:
            return self._pixels_to_input(torch.from_numpy(self._channels_first(array)))
        if array.dtype.kind != "f":
            raise RequestError(400, f"array of dtype {array.dtype}: send uint8 pixels or a float32 model input")
        size, chans = self.image_size, self.in_chans
        expected = [(chans, size, size)] + ([(size, size)] if chans == 1 else [])
        if array.shape not in expected:
            raise RequestError(400, f"float array of shape {list(array.shape)}: a model input is "
                                    f"{list(expected[0])} (normalised)")
        # A copy (np.array): the array is a read-only view of the request body. Checked after the
        # cast: a float64 of 1e300 is finite, and infinite as a float32.
        values = np.array(array, dtype=np.float32, order="C")
        if not np.isfinite(values).all():
            raise RequestError(400, "the array holds NaN or infinite values (as float32)")
        return torch.from_numpy(values).reshape(chans, size, size)

    def _channels_first(self, array: np.ndarray) -> np.ndarray:
        """uint8 pixels ``[H, W]`` (one channel), ``[H, W, C]`` or ``[C, H, W]`` -> ``[C, H, W]``."""
        chans = self.in_chans
        if array.ndim == 2 and chans == 1:
            return array[None].copy()
        if array.ndim == 3 and array.shape[2] == chans:
            return array.transpose(2, 0, 1).copy()
        if array.ndim == 3 and array.shape[0] == chans:
            return array.copy()
        raise RequestError(400, f"uint8 array of shape {list(array.shape)}: pixels are [H, W, {chans}] or "
                                f"[{chans}, H, W]" + (" or [H, W]" if chans == 1 else ""))

    def _pixels_to_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[C, H, W]`` -> resized, scaled to [0, 1] and normalised float ``[C, S, S]``."""
        if min(pixels.shape[1:]) < 1:
            raise RequestError(400, "image has no pixels")
        size = self.image_size
        if self.crop_ratio:
            pixels = v2.functional.center_crop(
                v2.functional.resize(pixels, [int(round(size / self.crop_ratio))], antialias=True), [size, size])
        elif tuple(pixels.shape[1:]) != (size, size):
            pixels = v2.functional.resize(pixels, [size, size], antialias=True)
        scaled = v2.functional.to_dtype(pixels, torch.float32, scale=True)
        return v2.functional.normalize(scaled, list(self.mean), list(self.std)).contiguous()


@dataclass(frozen=True)
class Decoding:
    """A body whose header has been read: its decoded size (pixels, or array values) and how to
    decode it (:meth:`finish`)."""

    pixels: int
    decode: Callable[[], torch.Tensor]

    def finish(self) -> torch.Tensor:
        """The normalised float tensor ``[C, S, S]``."""
        return self.decode()


def _body_type(body: bytes, content_type: Optional[str]) -> str:
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared in IMAGE_TYPES:
        return "image/jpeg" if IMAGE_TYPES[declared] == "JPEG" else declared
    if declared in NPY_TYPES:
        return "application/x-npy"
    if declared in SNIFFED_TYPES:
        for magic, kind in MAGIC:
            if body.startswith(magic):
                return kind
        raise RequestError(400, "body is neither a PNG or JPEG image nor a .npy array")
    raise RequestError(415, f"content type '{declared}' is not served; send image/png, image/jpeg or "
                            "application/x-npy (curl: -H 'Content-Type: image/png' --data-binary @FILE)")


def _load_npy(body: bytes) -> np.ndarray:
    """A ``.npy`` body as a read-only array view of it; never unpickles (object arrays are refused).

    Why not ``np.load``: it parses the header with ``ast.literal_eval`` on every call, which was a
    fifth of the server's Python time per request. Clients send the same header again and again,
    so each distinct header is parsed once, by numpy's own reader (:func:`_npy_header`)."""
    if body.startswith(b"PK\x03\x04"):
        raise RequestError(400, "body is an .npz archive; send one .npy array")
    if len(body) < 10 or not body.startswith(b"\x93NUMPY") or body[6] not in (1, 2):
        raise RequestError(400, "body is not a readable .npy array (format version 1 or 2)")
    start = 10 if body[6] == 1 else 12
    if len(body) < start:
        raise RequestError(400, "body is not a readable .npy array (truncated header)")
    end = start + int.from_bytes(body[8:start], "little")
    if len(body) < end or end - start > NPY_MAX_HEADER:
        raise RequestError(400, "body is not a readable .npy array (truncated or oversized header)")
    shape, fortran_order, dtype = _npy_header(body[:end])
    count = math.prod(shape)
    if len(body) - end != count * dtype.itemsize:
        raise RequestError(400, f"the .npy body holds {len(body) - end} data bytes; its header says "
                                f"{count * dtype.itemsize}")
    array = np.frombuffer(body, dtype, count, offset=end)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


@functools.lru_cache(maxsize=64)
def _npy_header(head: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, Fortran order, dtype) of a ``.npy`` magic string plus header, by numpy's reader."""
    read = np.lib.format.read_array_header_1_0 if head[6] == 1 else np.lib.format.read_array_header_2_0
    try:
        shape, fortran_order, dtype = read(io.BytesIO(head[8:]), max_header_size=NPY_MAX_HEADER)
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise RequestError(400, f"body is not a readable .npy array ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise RequestError(400, "the .npy array holds Python objects, which are never unpickled here; "
                                "send numbers")
    if dtype.names is not None or dtype.subdtype is not None or dtype.itemsize == 0:
        raise RequestError(400, f"the .npy array's dtype {dtype.str if dtype.names is None else 'structured'} "
                                "is not a plain number type; send uint8 pixels or float32 values")
    if not all(isinstance(n, int) and n >= 0 for n in shape):
        raise RequestError(400, f"the .npy header's shape {tuple(shape)} is not a shape (negative size)")
    return tuple(shape), bool(fortran_order), dtype


def preprocessing_for(info: Mapping[str, Any], entry: Optional[Mapping[str, Any]] = None) -> Preprocessing:
    """The preprocessing of a bundle: its ``"preprocessing"`` entry first, else derived from
    ``AdaptiveNet.info`` (model config, data spec, image size). Without a data spec, inputs are
    only scaled to [0, 1]."""
    config = info["model_config"]
    entry = dict(entry or {})
    in_chans = int(entry.get("in_chans", config["in_chans"]))
    image_size = int(entry.get("image_size") or info.get("image_size") or config["resolutions"][1])
    spec = info.get("data")
    if "mean" in entry and "std" in entry:
        mean, std = entry["mean"], entry["std"]
    elif spec:
        mean, std = normalisation(spec)
    else:
        mean, std = (0.0,) * in_chans, (1.0,) * in_chans
    names = entry.get("class_names") or (dataset_class_names(spec) if spec else None)
    num_classes = int(config["num_classes"])
    if not names or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    if "crop_ratio" in entry:
        crop = entry["crop_ratio"]
    else:  # bundles written before the entry existed
        crop = EVAL_CROP_FRACTION if spec and dataset_name(spec) == "folder" else None
    return Preprocessing(in_chans, image_size, tuple(float(m) for m in mean), tuple(float(s) for s in std),
                         tuple(str(n) for n in names), crop)


def top_classes(probabilities: Sequence[float], names: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, most probable first."""
    order = sorted(range(len(probabilities)), key=lambda i: (-probabilities[i], i))[:k]
    return [{"class": names[i], "probability": float(probabilities[i])} for i in order]
