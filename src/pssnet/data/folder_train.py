"""The data-loader worker's half of ImageNet-style folder training: read the file, draw the
sample's augmentation, decode and crop; hand uint8 pixels and the drawn parameters over.

Colour jitter, PCA lighting, the flip and the normalisation follow on the training device,
batched (:mod:`.device_stage`). Every random number of a sample is drawn here, in the worker,
from torch's global generator, which the trainer seeds per sample: a sample's augmentation
stays a function of its seed alone (exact resume), whatever the worker count or the batch.

The draws are torchvision's own (``RandomResizedCrop.get_params``, ``ColorJitter.get_params``),
as the reference's per-image pipeline makes them; lighting draws ``alpha ~ N(0, 0.1^2)`` per
principal component and the flip is a fair coin.
"""

from __future__ import annotations

import io
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as v1

from .image_files import CorruptImageError, describe_unreadable

CROP_SCALE = (0.25, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.4  # brightness, contrast and saturation factors are drawn from [1 - 0.4, 1 + 0.4]
LIGHTING_STD = 0.1

# Layout of a sample's parameter vector (float32).
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # jitter factors; also the op ids used in ORDER
ORDER = slice(3, 6)  # the three op ids in the order they are applied
ALPHA = slice(6, 9)  # lighting alpha per principal component
FLIP = 9  # 1.0: flip horizontally
PARAM_COUNT = 10


class TrainSample(NamedTuple):
    """A decoded training sample: the resized crop and its augmentation parameters."""

    pixels: torch.Tensor  # uint8 [3, size, size]
    params: torch.Tensor  # float32 [PARAM_COUNT]


class EncodedSample(NamedTuple):
    """A training sample whose decoding and cropping are left to the training device."""

    data: torch.Tensor  # uint8: the JPEG file's bytes [N], or decoded pixels [3, H, W]
    box: torch.Tensor  # int64 [4]: top, left, height, width of the crop within data's image
    params: torch.Tensor  # float32 [PARAM_COUNT]
    path: str  # named if the device cannot decode it


def draw_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of a random resized crop (scale 0.25..1, aspect 3/4..4/3),
    drawn as torchvision's ``RandomResizedCrop`` draws it."""
    shape_only = torch.empty(1, 1, 1).expand(1, height, width)  # get_params reads the size alone
    return tuple(v1.RandomResizedCrop.get_params(shape_only, list(CROP_SCALE), list(CROP_RATIO)))


def draw_params() -> torch.Tensor:
    """Colour jitter factors and order (torchvision's ``ColorJitter`` draw), lighting alpha and
    the flip of one sample, as a float32 ``[PARAM_COUNT]`` vector."""
    jitter = [1 - JITTER, 1 + JITTER]
    order, b, c, s, _ = v1.ColorJitter.get_params(jitter, jitter, jitter, None)
    alpha = (torch.randn(3) * LIGHTING_STD).tolist()
    flip = float(torch.rand(1) < 0.5)
    ops = [op for op in order.tolist() if op != 3]  # 3 is hue, which the recipe leaves out
    return torch.tensor([b, c, s, *ops, *alpha, flip], dtype=torch.float32)


def crop_resize(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """The ``box`` (top, left, height, width) of a uint8 ``[3, H, W]`` image, resized to
    ``size`` x ``size`` (bilinear, antialiased) as uint8, on the image's device.

    The CPU resizes uint8 directly (a vectorised path, fastest in channels-last layout); CUDA
    has no antialiased uint8 resize, so it goes through float32 and rounds."""
    top, left, height, width = (int(v) for v in box)
    crop = image[:, top:top + height, left:left + width].unsqueeze(0)
    if image.device.type == "cpu":
        crop = crop.contiguous(memory_format=torch.channels_last)
        return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    out = F.interpolate(crop.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)[0]


def decode_jpeg(data, device: str | torch.device = "cpu"):
    """torchvision's JPEG decoder (libjpeg-turbo on the CPU, nvJPEG on CUDA) as RGB, for one
    byte tensor or a list of them. (torchvision 0.29 marks it deprecated in favour of TorchCodec;
    Python's default filters keep that DeprecationWarning quiet. Silencing it here per call
    would cost 5 % of a worker's time.)"""
    from torchvision.io import ImageReadMode, decode_jpeg as _decode

    return _decode(data, mode=ImageReadMode.RGB, device=device)


def draft_factor(box: tuple[int, int, int, int], size: int) -> int:
    """The largest JPEG DCT scaling (1, 2, 4 or 8) that still leaves the crop at least ``size``
    px on both sides. Decoding at 1/k of the resolution skips most of the inverse DCT, colour
    conversion and resizing work; the entropy decoding stays (measured: such crops of 1000x750
    photographs 1.16x faster)."""
    height, width = box[2], box[3]
    for factor in (8, 4, 2):
        if height >= factor * size and width >= factor * size:
            return factor
    return 1


class FolderTrainTransform:
    """What a worker does with one training file: ``__call__(path)`` returns a
    :class:`TrainSample` (decoded here) or, with ``decode_on_device``, an :class:`EncodedSample`
    for JPEG files (others are decoded and cropped here and passed on the same way).
    ``draft=False`` turns reduced-size JPEG decoding off (for measuring it)."""

    def __init__(self, size: int, decode_on_device: bool = False, draft: bool = True) -> None:
        self.size = size
        self.decode_on_device = decode_on_device
        self.draft = draft

    def __call__(self, path: str):
        data = _read(path)
        header = _open(path, data)
        box = draw_crop(*header.size)
        params = draw_params()
        try:
            if self.decode_on_device and header.format == "JPEG" and header.mode in ("RGB", "L"):
                return EncodedSample(torch.from_numpy(data), torch.tensor(box), params, path)
            pixels = self._decode_crop(header, data, box)
        except (OSError, RuntimeError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise CorruptImageError(describe_unreadable(path, exc)) from None
        if self.decode_on_device:
            return EncodedSample(pixels, torch.tensor([0, 0, self.size, self.size]), params, path)
        return TrainSample(pixels, params)

    def _decode_crop(self, header: Image.Image, data: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        if self.draft and header.format == "JPEG" and draft_factor(box, self.size) > 1:
            return self._drafted_crop(header, box)
        if header.format == "JPEG":
            image = decode_jpeg(torch.from_numpy(data))
        else:
            image = torch.from_numpy(np.array(header.convert("RGB"))).permute(2, 0, 1)
        return crop_resize(image, box, self.size)

    def _drafted_crop(self, header: Image.Image, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Decode at 1/k resolution (libjpeg's DCT scaling) and map the crop box onto it (to
        whole pixels of the smaller image: at most k / 2 pixels of the original off)."""
        width, height = header.size
        factor = draft_factor(box, self.size)
        header.draft("RGB", (width // factor, height // factor))
        image = torch.from_numpy(np.array(header.convert("RGB"))).permute(2, 0, 1)
        sx, sy = image.shape[2] / width, image.shape[1] / height
        top, left, h, w = box
        y0, x0 = round(top * sy), round(left * sx)
        y1, x1 = min(image.shape[1], round((top + h) * sy)), min(image.shape[2], round((left + w) * sx))
        return crop_resize(image, (y0, x0, y1 - y0, x1 - x0), self.size)


def _read(path: str) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise CorruptImageError(describe_unreadable(path, exc)) from None


def _open(path: str, data: np.ndarray) -> Image.Image:
    """The image's header (size, format, mode), parsed without decoding the pixels."""
    try:
        return Image.open(io.BytesIO(data.tobytes()))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(describe_unreadable(path, exc)) from None

