"""Training and evaluation data: Fashion-MNIST/MNIST (IDX), CIFAR-10/100, image folders, shipped mini set.

:func:`load_data` turns a data spec into a :class:`DataBundle` of three datasets whose items
are ``(float tensor [C, H, W] normalised, int label)``, except the training split of an
ImageNet-style folder, which the bundle's ``device_stage`` finishes batch by batch.
"""

from __future__ import annotations

import pathlib
import pickle
from typing import Optional

import numpy as np
import torch

from ..errors import UserError
from .bundle import ArrayImageDataset, DataBundle, check_split, preprocessing_record
from .folders import folder_bundle
from .idx import read_idx_split
from .transforms import small_image_transform

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
MINI_PATH = pathlib.Path(__file__).with_name("fashion_mnist_mini.npz")
SPECS = "fashion-mnist[:DIR], mnist:DIR, cifar10:DIR, cifar100:DIR, folder:DIR, fashion-mnist-mini"

# name: (mean, std) per channel
_NORMALISATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
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


def _array_bundle(name: str, num_classes: int, train: tuple[np.ndarray, np.ndarray],
                  test: tuple[np.ndarray, np.ndarray], stats: Optional[str] = None) -> DataBundle:
    """In-memory images with the standard small-image augmentation: a random crop after padding
    (4 px for CIFAR, 2 px for the MNISTs), plus a horizontal flip for CIFAR. ``stats`` names the
    normalisation (default: ``name``'s)."""
    size = int(train[0].shape[1])
    in_chans = 1 if train[0].ndim == 3 else int(train[0].shape[3])
    mean, std = _NORMALISATION[stats or name]
    cifar = name.startswith("cifar")
    pad = 4 if cifar else 2
    train_tf = small_image_transform(size, mean, std, True, pad, flip=cifar)
    eval_tf = small_image_transform(size, mean, std, False, pad)
    augmentation = "pad-crop+flip" if cifar else "pad-crop"
    return DataBundle(name, num_classes, in_chans, size,
                      ArrayImageDataset(*train, train_tf), ArrayImageDataset(*train, eval_tf),
                      ArrayImageDataset(*test, eval_tf),
                      f"{name}: {size} px images, {augmentation} augmentation, evaluation at {size} px",
                      preprocessing_record(in_chans, size, mean, std,
                                           class_names(name) or [str(i) for i in range(num_classes)]))


def _idx_bundle(name: str, root: pathlib.Path) -> DataBundle:
    if not root.is_dir():
        raise UserError(f"data directory {root} does not exist; pass {name}:DIR with the IDX files")
    train = read_idx_split(root, "train", 10)
    test = read_idx_split(root, "t10k", 10)
    return _array_bundle(name, 10, train, test)


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


def read_cifar_batches(folder: pathlib.Path, names: list[str], label_key: str,
                       num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (checked to lie in ``[0, num_classes)``) of CIFAR
    python batch files, read without running code."""
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
        except PermissionError:
            raise UserError(f"{path} is not readable (permission denied); fix its permissions") from None
        except (pickle.UnpicklingError, KeyError, TypeError, ValueError, EOFError, IndexError) as exc:
            raise UserError(f"{path} is not a CIFAR python batch ({exc}); download the python version again") \
                from None
        except OSError as exc:
            raise UserError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None
        if len(images[-1]) != len(labels[-1]) or labels[-1].ndim != 1:
            raise UserError(f"{path}: {len(images[-1])} images but {labels[-1].size} labels; "
                            "download the python version again")
        check_split(labels[-1], num_classes, str(path))
    return np.concatenate(images), np.concatenate(labels)


def _cifar_bundle(name: str, root: pathlib.Path) -> DataBundle:
    folder, train_names, test_names, label_key = _CIFAR_FILES[name]
    parent = root.parent if root.name == folder else root
    if not (parent / folder).is_dir():
        raise UserError(f"no {folder} under {root}; pass {name}:DIR with the extracted python batches")
    num_classes = 10 if name == "cifar10" else 100
    train = read_cifar_batches(parent / folder, train_names, label_key, num_classes)
    test = read_cifar_batches(parent / folder, test_names, label_key, num_classes)
    return _array_bundle(name, num_classes, train, test)


def _mini_bundle() -> DataBundle:
    with np.load(MINI_PATH, allow_pickle=False) as data:
        train = (data["train_images"], data["train_labels"])
        test = (data["test_images"], data["test_labels"])
    return _array_bundle("fashion-mnist-mini", 10, train, test, stats="fashion-mnist")


def load_data(spec: str, image_size: Optional[int] = None) -> DataBundle:
    """Load a dataset by spec: ``fashion-mnist[:DIR]``, ``mnist:DIR``, ``cifar10:DIR``,
    ``cifar100:DIR``, ``folder:DIR`` (``train/`` + ``val/`` or ``test/``, one sub-folder per
    class; trained at ``image_size`` px, by default the images' native size capped at 224) or
    ``fashion-mnist-mini`` (shipped, no download).

    The data is checked here, before any training: files readable, labels in range, no empty
    split, a folder's classes (at least 2) and a sample of its images decodable. Every fault is a
    :class:`~pssnet.errors.UserError` that names the file. ``image_size`` applies to folders only."""
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
        return folder_bundle(root, image_size)
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
