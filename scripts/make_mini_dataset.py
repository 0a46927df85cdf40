"""Build the shipped ``fashion-mnist-mini`` data set from Fashion-MNIST's IDX files.

A stratified subset (a fixed number of images per class, drawn with a fixed seed) of the
training and test sets, stored as one compressed ``.npz`` inside the package so that the demo
needs no download. Source: Debian's ``dataset-fashion-mnist`` package (MIT licence, see
``src/pssnet/data/FASHION_MNIST_LICENSE.txt``).

    python scripts/make_mini_dataset.py [--src /usr/share/datasets/fashion-mnist]
"""

from __future__ import annotations

import argparse
import pathlib

import numpy as np

from pssnet.data import read_idx

OUT = pathlib.Path(__file__).resolve().parents[1] / "src" / "pssnet" / "data" / "fashion_mnist_mini.npz"


def find(src: pathlib.Path, stem: str) -> pathlib.Path:
    for name in (stem, stem + ".gz"):
        if (src / name).exists():
            return src / name
    raise SystemExit(f"{stem}[.gz] not found in {src}; install it with: apt-get install dataset-fashion-mnist")


def stratified(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=pathlib.Path, default=pathlib.Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    arrays = {}
    for split, prefix, per_class in (("train", "train", args.train_per_class), ("test", "t10k", args.test_per_class)):
        images = read_idx(find(args.src, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(find(args.src, f"{prefix}-labels-idx1-ubyte"))
        keep = stratified(labels, per_class, rng)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images[keep], labels[keep]
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB): "
          + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


if __name__ == "__main__":
    main()
