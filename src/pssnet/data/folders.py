"""Image-folder data sets (``folder:DIR`` with ``train/`` and ``val/`` or ``test/``, one
sub-folder per class): native image size detection, the transforms it implies, and images that
fail to decode reported with their path."""

from __future__ import annotations

import copy
import os
import pathlib
from typing import Callable, Optional

import numpy as np
from PIL import Image

from ..errors import UserError
from .bundle import DataBundle, preprocessing_record
from .device_stage import DeviceStage
from .folder_train import FolderTrainTransform
from .image_files import CorruptImageError, describe_unreadable
from .transforms import (EVAL_CROP_FRACTION, IMAGENET_MEAN_STD, imagenet_eval_transform, small_image_padding,
                         small_image_transform)

SIZE_SAMPLE = 64  # training images looked at to find the native size
TEST_SAMPLE = 16  # evaluation images decoded up front
SMALL_IMAGE_MAX = 64  # at or below: small-input supernet and CIFAR-style augmentation
LARGE_IMAGE_DEFAULT = 224  # larger images are trained at min(native size, this)


def load_rgb(path: str) -> Image.Image:
    """Decode one image file as RGB; a file that fails raises :class:`CorruptImageError` naming it."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptImageError(describe_unreadable(path, exc)) from None


def file_path(path: str) -> str:
    """The ``loader`` of a training folder whose transform reads the file itself."""
    return path


def _image_folder(directory: pathlib.Path, transform: Callable):
    from torchvision import datasets

    try:
        return datasets.ImageFolder(str(directory), transform=transform, loader=load_rgb)
    except FileNotFoundError as exc:  # no class folders, or a class folder without images
        raise UserError(f"{directory}: {exc}; put the images in one sub-folder per class") from None
    except OSError as exc:
        raise UserError(f"cannot read {directory} ({exc.strerror or exc}); check its permissions") from None


def _check_class_names(directory: pathlib.Path, classes: list[str]) -> None:
    """Class folder names become the class names of reports, bundles and served answers (text):
    refuse one that is not UTF-8. (Image file names may be any bytes: they are only opened.)"""
    for name in classes:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            shown = repr(os.fsencode(name))[2:-1]
            raise UserError(f"the class folder {shown} in {directory} has a name that is not UTF-8 text; "
                            "rename it (it becomes the class name in reports and deployment bundles)") from None


def _spread(count: int, limit: int) -> list[int]:
    """Up to ``limit`` indices spread evenly over ``range(count)`` (so every class is looked at)."""
    return sorted(set(np.linspace(0, count - 1, min(count, limit)).round().astype(int).tolist()))


def detect_image_size(paths: list[str], limit: int = SIZE_SAMPLE) -> tuple[int, int]:
    """``(median of min(width, height), images looked at)`` over up to ``limit`` of ``paths``.

    Every image looked at is decoded, so a corrupt one is reported here, before training."""
    picks = [paths[i] for i in _spread(len(paths), limit)]
    sizes = [min(load_rgb(path).size) for path in picks]
    return int(np.median(sizes)), len(picks)


def _describe(size: int, native: int, looked_at: int, overridden: bool) -> str:
    found = (f"image_size {size} (the images are {native} px)" if overridden
             else f"{native} px images (detected from {looked_at} files)")
    if size <= SMALL_IMAGE_MAX:
        return (f"folder: {found}, small-input supernet, pad-crop+flip augmentation at {size} px, "
                f"evaluation at {size} px")
    resize = int(round(size / EVAL_CROP_FRACTION))
    return (f"folder: {found}, trained at {size} px, random-resized-crop+colour-jitter+lighting+flip "
            f"augmentation, evaluation resize {resize}/centre-crop {size}")


def _transforms(size: int) -> tuple[Callable, Callable]:
    mean, std = IMAGENET_MEAN_STD
    if size <= SMALL_IMAGE_MAX:
        pad = small_image_padding(size)
        return (small_image_transform(size, mean, std, True, pad, fit=True),
                small_image_transform(size, mean, std, False, pad, fit=True))
    return FolderTrainTransform(size), imagenet_eval_transform(size)


def folder_bundle(root: pathlib.Path, image_size: Optional[int] = None) -> DataBundle:
    """The bundle of an image folder, at ``image_size`` px or, when None, the images' native size
    (capped at 224 px); checked up front: at least 2 classes, the same classes in both splits,
    a sample of the images decodable."""
    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise UserError(f"{root} needs train/ and val/ (or test/) sub-directories with one folder per class")
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                   or image_size < 1):
        raise UserError(f"image size {image_size!r} is not a positive whole number of pixels")
    train = _image_folder(root / "train", None)
    test = _image_folder(test_dir, None)
    if len(train.classes) < 2:
        raise UserError(f"{root / 'train'} has {len(train.classes)} class folder; "
                        "a classifier needs at least 2 (one sub-folder per class)")
    if test.classes != train.classes:
        raise UserError(f"{test_dir} and {root / 'train'} have different class folders; make them match")
    _check_class_names(root / "train", train.classes)
    native, looked_at = detect_image_size([path for path, _ in train.samples])
    detect_image_size([path for path, _ in test.samples], TEST_SAMPLE)
    size = image_size or (native if native <= SMALL_IMAGE_MAX else min(native, LARGE_IMAGE_DEFAULT))
    train.transform, eval_tf = _transforms(size)
    train_eval = copy.copy(train)  # shares the scanned file list
    train_eval.transform = test.transform = eval_tf
    stage = None
    if isinstance(train.transform, FolderTrainTransform):  # ImageNet-style: the workers read, decode and crop
        train.loader = file_path
        stage = DeviceStage(train.transform, *IMAGENET_MEAN_STD)
    # Evaluation resizes the shorter side (to size, or size / 0.875 for ImageNet-style images) and crops.
    crop = 1.0 if size <= SMALL_IMAGE_MAX else EVAL_CROP_FRACTION
    return DataBundle("folder", len(train.classes), 3, size, train, train_eval, test,
                      _describe(size, native, looked_at, image_size is not None),
                      preprocessing_record(3, size, *IMAGENET_MEAN_STD, train.classes, crop), stage)
