"""A re-implementation of the PSS-Net reference's ImageNet training input pipeline
(github.com/chenbong/PSS-Net, ``utils/datasets.py`` and ``utils/transforms.py``), the baseline
that ``benchmarks/pipeline.py`` measures ours against and that ``tests/test_data_pipeline.py``
compares our augmentation distribution with. Written from its description, not copied.

Per image, in a data-loader worker (torchvision's classic, PIL-based transforms):

1. decode: torchvision's ``ImageFolder`` default loader (PIL ``open``, ``convert("RGB")``);
2. ``RandomResizedCrop(224, scale=(0.25, 1))`` (aspect 3/4..4/3, PIL bilinear resize);
3. ``ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4)`` (PIL ``ImageEnhance``, the three
   in a random order per image);
4. PCA lighting 0.1: ``alpha ~ N(0, 0.1^2)`` per component from numpy's global generator; the
   [0, 1]-scale shift ``V (alpha * lambda)`` is added to the uint8 pixels, clipped and truncated
   back to uint8 (so every pixel moves by 0 or -1);
5. ``RandomHorizontalFlip()``;

then per batch: a uint8 ``[B, 3, H, W]`` collate (each image copied from a numpy view), and on the
training device ``float()``, minus ``255 * mean``, divided by ``255 * std``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

SIZE = 224
CROP_SCALE = [0.25, 1.0]
CROP_RATIO = [3 / 4, 4 / 3]
JITTER = 0.4
LIGHTING_STD = 0.1
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
EIGVALS = np.array([0.2175, 0.0188, 0.0045])
EIGVECS = np.array([[-0.5675, 0.7192, 0.4009],
                    [-0.5808, -0.0045, -0.8140],
                    [-0.5836, -0.6948, 0.4203]])


def load(path: str) -> Image.Image:
    """torchvision's default ``ImageFolder`` loader."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


class Lighting:
    """The reference's PCA lighting on a PIL image: a [0, 1]-scale shift added to uint8 pixels."""

    def __init__(self, std: float = LIGHTING_STD) -> None:
        self.std = std

    def draw_alpha(self) -> np.ndarray:
        return (np.random.randn(3) * self.std).astype(np.float32)

    def __call__(self, image: Image.Image) -> Image.Image:
        return self.shift(image, self.draw_alpha())

    @staticmethod
    def shift(image: Image.Image, alpha: np.ndarray) -> Image.Image:
        shift = EIGVECS @ (np.asarray(alpha, dtype=np.float32) * EIGVALS)
        shifted = np.clip(np.asarray(image) + shift, 0, 255)
        return Image.fromarray(shifted.astype(np.uint8), "RGB")


def transform(size: int = SIZE) -> T.Compose:
    """The per-image training transform (PIL in, PIL out)."""
    return T.Compose([T.RandomResizedCrop(size, scale=tuple(CROP_SCALE)),
                      T.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER),
                      Lighting(), T.RandomHorizontalFlip()])


def apply(image: Image.Image, size: int, box: Sequence[int], factors: Sequence[float], order: Sequence[int],
          alpha: Sequence[float], flip: bool) -> Image.Image:
    """The per-image steps with given parameters: crop ``box`` (top, left, height, width),
    jitter ``factors`` (brightness, contrast, saturation) in ``order`` (ids 0, 1, 2), lighting
    ``alpha``, ``flip``."""
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    image = TF.resized_crop(image, *box, [size, size])
    for op in order:
        image = adjust[op](image, factors[op])
    image = Lighting.shift(image, np.asarray(alpha))
    return TF.hflip(image) if flip else image


def collate(images: Sequence[Image.Image]) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]``, image by image from numpy views."""
    width, height = images[0].size
    batch = torch.zeros((len(images), 3, height, width), dtype=torch.uint8)
    for i, image in enumerate(images):
        batch[i] += torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
    return batch


def normalise(batch: torch.Tensor) -> torch.Tensor:
    """What the reference's prefetcher does on the GPU."""
    mean = torch.tensor(MEAN, device=batch.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=batch.device).view(1, 3, 1, 1) * 255
    return batch.float().sub_(mean).div_(std)


def parameter_draws(count: int, width: int, height: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``count`` draws of the pipeline's random parameters for a ``width`` x ``height`` image,
    made by the same calls its transforms make: crop scale (area fraction) and aspect (w / h),
    jitter factors, the jitter order (a permutation of brightness 0, contrast 1, saturation 2,
    as an id ``9 o0 + 3 o1 + o2``), lighting alpha and the flip."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    shape_only = torch.empty(1, 1, 1).expand(1, height, width)
    jitter = [1 - JITTER, 1 + JITTER]
    lighting = Lighting()
    rows = []
    for _ in range(count):
        _, _, h, w = T.RandomResizedCrop.get_params(shape_only, CROP_SCALE, CROP_RATIO)
        order, b, c, s, _ = T.ColorJitter.get_params(jitter, jitter, jitter, None)
        o = [int(v) for v in order if v != 3]
        alpha = lighting.draw_alpha()
        flip = float(torch.rand(1) < 0.5)
        rows.append([h * w / (width * height), w / h, b, c, s, 9 * o[0] + 3 * o[1] + o[2], *alpha, flip])
    table = np.array(rows)
    return {"crop_scale": table[:, 0], "crop_aspect": table[:, 1], "brightness": table[:, 2],
            "contrast": table[:, 3], "saturation": table[:, 4], "order": table[:, 5].astype(int),
            "alpha": table[:, 6:9], "flip": table[:, 9]}
