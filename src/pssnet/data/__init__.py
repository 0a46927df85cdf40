"""Datasets for training and evaluation (see :func:`load_data`)."""

from .bundle import ArrayImageDataset, DataBundle, data_fingerprint
from .datasets import DEFAULT_FASHION_MNIST_DIR, SPECS, load_data, split_train
from .folders import CorruptImageError, detect_image_size
from .idx import find_idx, read_idx
from .transforms import Lighting, imagenet_eval_transform, imagenet_train_transform

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "SPECS", "ArrayImageDataset", "CorruptImageError", "DataBundle", "Lighting",
           "data_fingerprint", "detect_image_size", "find_idx", "imagenet_eval_transform",
           "imagenet_train_transform", "load_data", "read_idx", "split_train"]
