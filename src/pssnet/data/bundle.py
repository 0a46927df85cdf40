"""What :func:`pssnet.data.load_data` returns: a :class:`DataBundle` of datasets, the checks
every bundle's labels and splits pass before training starts, and the fingerprint that
identifies a bundle's data wherever it lies (checked when a run resumes)."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import UserError


@dataclass
class DataBundle:
    """The splits of one dataset. ``train_eval`` holds the training images without augmentation.

    ``description`` says in one line what was chosen (image size and how it was found,
    augmentation), for the trainer to print. ``preprocessing`` is what a deployed model needs to
    turn an image into an input as evaluation does (plain data, stored in bundles):
    ``{"in_chans", "image_size", "mean", "std", "class_names", "crop_ratio"}``, where a
    ``crop_ratio`` r means: resize the shorter side to ``image_size / r``, then centre-crop
    (None: resize to ``image_size`` square).

    ``device_stage`` (a :class:`~pssnet.data.device_stage.DeviceStage`) is set where the training
    split's items are not ready-made: an ImageNet-style folder's ``train`` yields uint8 crops and
    their augmentation parameters, which the stage collates and finishes on the training device.
    None: every split yields ``(normalised float tensor, label)``."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    train: Dataset
    train_eval: Dataset
    test: Dataset
    description: str = ""
    preprocessing: dict = field(default_factory=dict)
    device_stage: Any = None


def preprocessing_record(in_chans: int, image_size: int, mean, std, class_names,
                         crop_ratio: Optional[float] = None) -> dict:
    """The plain-data ``DataBundle.preprocessing`` entry."""
    return {"in_chans": int(in_chans), "image_size": int(image_size), "mean": [float(m) for m in mean],
            "std": [float(s) for s in std], "class_names": [str(n) for n in class_names],
            "crop_ratio": None if crop_ratio is None else float(crop_ratio)}


class ArrayImageDataset(Dataset):
    """Images held in memory as uint8 ``[N, H, W]`` or ``[N, H, W, C]`` arrays, with a transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        if images.ndim == 3:
            images = images[:, None]  # [N, 1, H, W]
        else:
            images = images.transpose(0, 3, 1, 2)
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8, order="C"))  # own, writable copy
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


def check_split(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Refuse an empty split or labels outside ``[0, num_classes)``; ``where`` names the file(s)."""
    if len(labels) == 0:
        raise UserError(f"{where} holds no images; pass a data set with images in every split")
    low, high = int(np.min(labels)), int(np.max(labels))
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise UserError(f"{where} has label {bad}, outside 0..{num_classes - 1} for {num_classes} classes; "
                        "fix or replace the label file")


FINGERPRINT_VERSION = 1  # part of every fingerprint: a changed recipe never matches an old one


def data_fingerprint(data: DataBundle) -> str:
    """What identifies a data set wherever it lies (so that a run can follow it to a new
    directory): its kind, classes, image size and split sizes, every label, and the pixels of
    in-memory data or the files' paths within an image folder's splits (not their contents:
    reading every image would take as long as an epoch)."""
    digest = hashlib.sha256(json.dumps([data.name, data.num_classes, data.in_chans, data.image_size,
                                        data.preprocessing.get("class_names"), len(data.train),
                                        len(data.test)]).encode())
    for split in (data.train, data.test):
        for part in _identity_parts(split):
            digest.update(part)
    return f"v{FINGERPRINT_VERSION}:{digest.hexdigest()[:32]}"


def _identity_parts(split: Dataset) -> Iterator[bytes]:
    if isinstance(split, ArrayImageDataset):
        yield split.labels.numpy().tobytes()
        yield split.images.numpy().tobytes()
    elif hasattr(split, "samples") and hasattr(split, "root"):  # torchvision's ImageFolder
        root = os.path.join(split.root, "")  # its paths are joined onto it: cut, not os.path.relpath (slow)
        for path, label in split.samples:
            # surrogateescape: a file name that is not UTF-8 hashes as its bytes (valid names as before)
            yield f"{path[len(root):] if path.startswith(root) else path}\0{label}\n".encode("utf-8", "surrogateescape")
