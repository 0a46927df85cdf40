"""Datasets for training and evaluation (see :func:`load_data`)."""

from .datasets import (DEFAULT_FASHION_MNIST_DIR, SPECS, ArrayImageDataset, DataBundle, load_data, read_idx,
                       split_train)

__all__ = ["DEFAULT_FASHION_MNIST_DIR", "SPECS", "ArrayImageDataset", "DataBundle", "load_data", "read_idx",
           "split_train"]
