"""Image transforms: training augmentation and evaluation pre-processing for every data set.

All randomness comes from torch's global generator, which the trainer seeds per sample (so a
sample's augmentation is a function of its seed alone, which exact resume relies on).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torchvision.transforms import v2

# Principal components of ImageNet's RGB pixel values in [0, 1] (AlexNet's PCA colour noise, as
# used by the slimmable / US-Nets / PSS-Net reference code). Columns of _EIGVECS are the components.
IMAGENET_EIGVALS = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVECS = ((-0.5675, 0.7192, 0.4009),
                    (-0.5808, -0.0045, -0.8140),
                    (-0.5836, -0.6948, 0.4203))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

# The usual ImageNet evaluation crop: resize to 256, centre-crop 224.
EVAL_CROP_FRACTION = 224 / 256


class Lighting(torch.nn.Module):
    """AlexNet-style PCA lighting noise on a float ``[3, H, W]`` image in [0, 1].

    Adds ``eigvecs @ (alpha * eigvals)`` to every pixel, with ``alpha ~ N(0, std^2)`` per
    component: one colour shift per image along ImageNet's principal colour axes."""

    def __init__(self, std: float = 0.1, eigvals: Sequence[float] = IMAGENET_EIGVALS,
                 eigvecs: Sequence[Sequence[float]] = IMAGENET_EIGVECS) -> None:
        super().__init__()
        self.std = float(std)
        self.eigvals = torch.tensor(eigvals, dtype=torch.float32)
        self.eigvecs = torch.tensor(eigvecs, dtype=torch.float32)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        shift = self.eigvecs @ (alpha * self.eigvals)
        return image + shift.to(image.dtype).view(3, 1, 1)


def _to_normalised_float(mean: Sequence[float], std: Sequence[float]) -> list[Callable]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def imagenet_train_transform(size: int) -> v2.Compose:
    """The reference's ImageNet training augmentation: random resized crop (scale 0.25..1),
    colour jitter 0.4/0.4/0.4, PCA lighting noise 0.1, horizontal flip; then normalisation.

    This is the recipe per image, float32 out. Folder training splits the same recipe between
    the data-loader workers and the training device (:mod:`.folder_train`, :mod:`.device_stage`)."""
    mean, std = IMAGENET_MEAN_STD
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.25, 1.0), antialias=True),
                       v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                       v2.ToImage(), v2.ToDtype(torch.float32, scale=True), Lighting(0.1),
                       v2.RandomHorizontalFlip(), v2.Normalize(mean, std)])


def imagenet_eval_transform(size: int) -> v2.Compose:
    """Resize the shorter side to ``size / 0.875`` (256 for 224), centre-crop ``size``, normalise."""
    mean, std = IMAGENET_MEAN_STD
    return v2.Compose([v2.Resize(int(round(size / EVAL_CROP_FRACTION)), antialias=True), v2.CenterCrop(size),
                       *_to_normalised_float(mean, std)])


def small_image_transform(size: int, mean: Sequence[float], std: Sequence[float], train: bool,
                          padding: int, flip: bool = True, fit: bool = False) -> v2.Compose:
    """Small images (CIFAR-style) at ``size`` px: for training a random crop after zero padding by
    ``padding`` px, and a horizontal flip if ``flip``; then normalisation. With ``fit``, the input
    (a PIL image) is first resized and centre-cropped to ``size`` (untouched when already there)."""
    steps: list[Callable] = [v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)] if fit else []
    if train:
        steps.append(v2.RandomCrop(size, padding=padding))
        if flip:
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def small_image_padding(size: int) -> int:
    """CIFAR's 4 px of padding at 32 px, scaled with the image size (at least 1 px)."""
    return max(1, int(round(size / 8)))
