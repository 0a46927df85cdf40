"""IDX files (MNIST, Fashion-MNIST), plain or gzipped, read with every fault reported as a
:class:`~pssnet.errors.UserError` that names the file."""

from __future__ import annotations

import gzip
import pathlib
import zlib

import numpy as np

from ..errors import UserError
from .bundle import check_split

_UNSIGNED_BYTE = 0x08


def _read_bytes(path: pathlib.Path) -> bytes:
    gzipped = path.suffix == ".gz"
    try:
        with (gzip.open if gzipped else open)(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist; pass the directory holding the IDX files") from None
    except PermissionError:
        raise UserError(f"{path} is not readable (permission denied); fix its permissions") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise UserError(f"{path} is not a complete gzip file ({exc}); download it again") from None
    except OSError as exc:
        raise UserError(f"cannot read {path} ({exc.strerror or exc}); check the file") from None


def read_idx(path: pathlib.Path | str) -> np.ndarray:
    """Read an unsigned-byte IDX file (gzipped when its name ends in ``.gz``) into a numpy array.

    Raises :class:`~pssnet.errors.UserError` naming the file when it is missing, unreadable, a
    corrupt gzip, not an unsigned-byte IDX file, or holds another number of values than its header says."""
    path = pathlib.Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UNSIGNED_BYTE:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        "pass a directory with the original files")
    ndim = data[3]
    offset = 4 + 4 * ndim
    if ndim == 0 or len(data) < offset:
        raise UserError(f"{path} has a damaged IDX header ({ndim} dimensions); download it again")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    expected = int(np.prod(shape, dtype=np.int64))
    if array.size != expected:
        state = "truncated" if array.size < expected else "longer than its header says"
        raise UserError(f"{path} is {state} ({array.size} values for shape {shape}); download it again")
    return array.reshape(shape)


def find_idx(root: pathlib.Path, stem: str) -> pathlib.Path:
    """The file ``stem`` or ``stem.gz`` under ``root`` (or its usual torchvision sub-folders)."""
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw", root / "MNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    raise UserError(f"no {stem}[.gz] under {root}; pass the directory holding the IDX files "
                    "(Debian: apt install dataset-fashion-mnist)")


def read_idx_split(root: pathlib.Path, prefix: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, H, W]`` and labels ``[N]`` of one split (``train`` or ``t10k``), with shapes,
    counts and labels (in ``[0, num_classes)``) checked."""
    image_path = find_idx(root, f"{prefix}-images-idx3-ubyte")
    label_path = find_idx(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise UserError(f"{image_path} holds a {images.ndim}-D array, not images [N, H, W]; "
                        "pass the original image file")
    if labels.ndim != 1:
        raise UserError(f"{label_path} holds a {labels.ndim}-D array, not labels [N]; pass the original label file")
    if len(images) != len(labels):
        raise UserError(f"{root}: {len(images)} {prefix} images but {len(labels)} labels; files do not match")
    check_split(labels, num_classes, str(label_path))
    return images, labels
