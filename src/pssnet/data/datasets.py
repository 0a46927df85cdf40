"""Training and evaluation data: Fashion-MNIST/MNIST (IDX), CIFAR-10/100, image folders, shipped mini set.

:func:`load_data` turns a data spec into a :class:`DataBundle` of three datasets whose items
are ``(float tensor [C, H, W] normalised, int label)``.
"""

from __future__ import annotations

import gzip
import pathlib
import pickle
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import UserError

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MINI_PATH = pathlib.Path(__file__).with_name("fashion_mnist_mini.npz")
SPECS = "fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR, fashion-mnist-mini"

# name: (mean, std) per channel
_NORMALISATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Class names of the data sets whose labels have fixed meanings (folder data sets name theirs).
_CLASS_NAMES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def dataset_name(spec: str) -> str:
    """The data set a spec names (``fashion-mnist-mini`` -> ``fashion-mnist``, ``cifar10:DIR`` -> ``cifar10``)."""
    name = spec.partition(":")[0].strip().lower()
    return "fashion-mnist" if name == "fashion-mnist-mini" else name


def normalisation(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel ``(mean, std)`` that :func:`load_data` normalises the spec's images with."""
    name = dataset_name(spec)
    if name not in _NORMALISATION:
        raise UserError(f"unknown data spec '{spec}'; use one of {SPECS}")
    return _NORMALISATION[name]


def class_names(spec: str) -> Optional[tuple[str, ...]]:
    """The class names of the spec's data set, or None where only the data's folders know them."""
    return _CLASS_NAMES.get(dataset_name(spec))


@dataclass
class DataBundle:
    """The splits of one dataset. ``train_eval`` holds the training images without augmentation."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    train: Dataset
    train_eval: Dataset
    test: Dataset


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


def _tensor_transforms(name: str, size: int, train: bool) -> Callable:
    """Standard augmentation on uint8 tensors: crop with padding (+ flip for CIFAR)."""
    mean, std = _NORMALISATION[name]
    steps: list[Callable] = []
    if train:
        steps.append(v2.RandomCrop(size, padding=4 if name.startswith("cifar") else 2))
        if name.startswith("cifar"):
            steps.append(v2.RandomHorizontalFlip())
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def _array_bundle(name: str, num_classes: int, train: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray]) -> DataBundle:
    size = int(train[0].shape[1])
    in_chans = 1 if train[0].ndim == 3 else int(train[0].shape[3])
    train_tf, eval_tf = _tensor_transforms(name, size, True), _tensor_transforms(name, size, False)
    return DataBundle(name, num_classes, in_chans, size,
                      ArrayImageDataset(*train, train_tf), ArrayImageDataset(*train, eval_tf),
                      ArrayImageDataset(*test, eval_tf))


# -- IDX (MNIST, Fashion-MNIST) ---------------------------------------------------------------
def read_idx(path: pathlib.Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file; pass a directory with the original files")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise UserError(f"{path} is truncated ({array.size} values for shape {shape}); download it again")
    return array.reshape(shape)


def _find_idx(root: pathlib.Path, stem: str) -> pathlib.Path:
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"no {stem}[.gz] under {root}; pass the directory holding the IDX files "
                    "(Debian: apt install dataset-fashion-mnist)")


def _idx_bundle(name: str, root: pathlib.Path) -> DataBundle:
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist; pass {name}:DIR with the IDX files")
    split = {}
    for prefix, key in (("train", "train"), ("t10k", "test")):
        images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
        if len(images) != len(labels):
            raise UserError(f"{root}: {len(images)} {prefix} images but {len(labels)} labels; files do not match")
        split[key] = (images, labels)
    return _array_bundle(name, 10, split["train"], split["test"])


# -- CIFAR python batches ---------------------------------------------------------------------
# CIFAR's "python version" is a pickle. Only the globals that rebuild its numpy arrays may be
# loaded, so that a crafted batch file cannot run code.
_CIFAR_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_CIFAR_FILES = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                            "labels"),
                "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels")}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_cifar_batches(folder: pathlib.Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels of CIFAR python batch files, read without running code."""
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = _ArraysOnlyUnpickler(f, encoding="latin1").load()
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(batch[label_key], dtype=np.int64))
        except FileNotFoundError:
            raise UserError(f"{path} is missing; extract the complete python version of the data set") from None
        except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError) as exc:
            raise UserError(f"{path} is not a CIFAR python batch ({exc}); download the python version again") \
                from None
    return np.concatenate(images), np.concatenate(labels)


def _cifar_bundle(name: str, root: pathlib.Path) -> DataBundle:
    folder, train_names, test_names, label_key = _CIFAR_FILES[name]
    parent = root.parent if root.name == folder else root
    if not (parent / folder).is_dir():
        raise UserError(f"no {folder} under {root}; pass {name}:DIR with the extracted python batches")
    train = read_cifar_batches(parent / folder, train_names, label_key)
    test = read_cifar_batches(parent / folder, test_names, label_key)
    return _array_bundle(name, 10 if name == "cifar10" else 100, train, test)


# -- ImageNet-style folders -------------------------------------------------------------------
def _folder_bundle(root: pathlib.Path, image_size: int) -> DataBundle:
    from torchvision import datasets

    test_dir = next((root / d for d in ("val", "test") if (root / d).is_dir()), None)
    if not (root / "train").is_dir() or test_dir is None:
        raise UserError(f"{root} needs train/ and val/ (or test/) sub-directories with one folder per class")
    mean, std = _NORMALISATION["folder"]
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    train_tf = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), *tail])
    eval_tf = v2.Compose([v2.Resize(int(round(image_size / 0.875)), antialias=True), v2.CenterCrop(image_size),
                          *tail])
    train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
    train_eval = datasets.ImageFolder(str(root / "train"), transform=eval_tf)
    test = datasets.ImageFolder(str(test_dir), transform=eval_tf)
    if test.classes != train.classes:
        raise UserError(f"{test_dir} and {root / 'train'} have different class folders; make them match")
    sample, _ = train_eval[0]
    return DataBundle("folder", len(train.classes), int(sample.shape[0]), image_size, train, train_eval, test)


def _mini_bundle() -> DataBundle:
    with np.load(MINI_PATH, allow_pickle=False) as data:
        train = (data["train_images"], data["train_labels"])
        test = (data["test_images"], data["test_labels"])
    bundle = _array_bundle("fashion-mnist", 10, train, test)
    bundle.name = "fashion-mnist-mini"
    return bundle


def load_data(spec: str, image_size: Optional[int] = None) -> DataBundle:
    """Load a dataset by spec: ``fashion-mnist[:DIR]``, ``mnist:DIR``, ``cifar10:DIR``,
    ``cifar100:DIR``, ``folder:DIR`` (``train/`` + ``val/`` or ``test/``; ``image_size``
    defaults to 224) or ``fashion-mnist-mini`` (shipped, no download)."""
    name, _, location = spec.partition(":")
    name = name.strip().lower()
    if name == "fashion-mnist-mini":
        return _mini_bundle()
    if name == "fashion-mnist":
        return _idx_bundle(name, pathlib.Path(location or DEFAULT_FASHION_MNIST_DIR).expanduser())
    if name not in ("mnist", "cifar10", "cifar100", "folder"):
        raise UserError(f"unknown data spec '{spec}'; use one of {SPECS}")
    if not location:
        raise UserError(f"data spec '{spec}' needs a directory: write {name}:DIR")
    root = pathlib.Path(location).expanduser()
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist; check the path in '{spec}'")
    if name == "mnist":
        return _idx_bundle(name, root)
    if name == "folder":
        return _folder_bundle(root, image_size or 224)
    return _cifar_bundle(name, root)


def split_train(num_items: int, holdout: int, calib_items: int, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic disjoint (held-out, calibration) index lists of a training set.

    The held-out images are the first ``holdout`` of a permutation seeded by ``seed``. The
    trainer excludes ``split_train(n, count, 0, seed)[0]`` from training and records
    ``{"count", "seed"}`` as the run's ``"holdout"``, so that ``pssnet eval`` selects subnets on
    images the run never trained on."""
    if num_items < 2:
        raise UserError(f"the training split has {num_items} images; evaluation needs at least 2")
    holdout = min(holdout, num_items // 2)
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed)).tolist()
    return order[:holdout], order[holdout:holdout + calib_items]
