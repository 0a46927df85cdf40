"""Seeded ImageNet-style folders of synthetic photographs as JPEG files, for measuring and
rehearsing the input pipeline without downloading ImageNet.

    python benchmarks/synthetic_jpegs.py DIR [--classes 4] [--train-per-class 64] [--val-per-class 4]
                                             [--size 500x375] [--distinct 256] [--seed 0]

Each picture has what makes decoding cost what it costs on photographs: a 1/f colour texture
(seven octaves of smooth noise, mixed across channels), a few flat shapes with sharp edges,
slight blur and sensor-like grain, stored at JPEG quality 90 (about 60 kB at 500x375, where
ImageNet's average photograph is about 110 kB at 400x350). ``--distinct N`` generates N pictures
and writes every further file as a copy of one of them (decoding costs the same; generating
costs 50 ms a picture). ``DIR/train/CLASS/*.jpg`` and ``DIR/val/CLASS/*.jpg``.
"""

from __future__ import annotations

import argparse
import io
import pathlib
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

QUALITY = 90


def synthetic_photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> Image.Image:
    """One RGB picture with photograph-like statistics, drawn from ``rng``."""
    texture = np.zeros((height, width, 3), np.float32)
    mix = rng.normal(0, 1, (3, 3)).astype(np.float32) + 1.5 * np.eye(3, dtype=np.float32)
    for octave in range(1, 8):
        cells = 2 ** octave
        field = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        smooth = np.stack([np.asarray(Image.fromarray(field[..., c]).resize((width, height), Image.BICUBIC))
                           for c in range(3)], -1)
        texture += smooth @ mix / 1.4 ** octave
    texture = (texture - texture.mean()) / (texture.std() + 1e-6) * 45 + rng.uniform(90, 160, 3)
    picture = Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, 200)), y0 + int(rng.integers(20, 200))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 1.5))))
    grain = np.asarray(picture, dtype=np.float32) + rng.normal(0, 9, (height, width, 3))
    return Image.fromarray(np.clip(grain, 0, 255).astype(np.uint8))


def jpeg_bytes(picture: Image.Image, quality: int = QUALITY) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_image_folder(root: pathlib.Path, classes: int = 4, train_per_class: int = 64, val_per_class: int = 4,
                       size: tuple[int, int] = (500, 375), distinct: Optional[int] = None,
                       seed: int = 0) -> list[pathlib.Path]:
    """Write ``root/{train,val}/classNN/NNNNN.jpg``; returns the training files in order.

    ``distinct``: pictures generated (default: one per file); further files repeat them."""
    rng = np.random.default_rng(seed)
    total = classes * (train_per_class + val_per_class)
    pictures: list[bytes] = []
    written = []
    for n in range(total):
        if distinct is None or len(pictures) < distinct:
            pictures.append(jpeg_bytes(synthetic_photo(rng, *size)))
        split, cls = ("train", (n // train_per_class)) if n < classes * train_per_class else \
            ("val", (n - classes * train_per_class) // val_per_class)
        folder = root / split / f"class{cls:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{n:05d}.jpg"
        path.write_bytes(pictures[n % len(pictures)])
        if split == "train":
            written.append(path)
    return written


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.partition("x")
    return int(width), int(height)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=pathlib.Path)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--train-per-class", type=int, default=64)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--size", type=_size, default=(500, 375), help="WIDTHxHEIGHT (default 500x375)")
    parser.add_argument("--distinct", type=int, default=None, help="pictures generated; further files repeat them")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    files = write_image_folder(args.root, args.classes, args.train_per_class, args.val_per_class, args.size,
                               args.distinct, args.seed)
    print(f"wrote {len(files)} training and {args.classes * args.val_per_class} validation JPEGs "
          f"of {args.size[0]}x{args.size[1]} under {args.root}")


if __name__ == "__main__":
    main()
