"""Bad data files end in a one-line UserError that names the file, at load_data time."""

import gzip
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import pssnet.data.idx as idx_module
from pssnet.data import CorruptImageError, load_data, read_idx
from pssnet.errors import UserError


def _idx_bytes(array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root, labels=None, train_images=None, compress=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 12, dtype=np.uint8) if labels is None else labels
    suffix = ".gz" if compress else ""
    for prefix, imgs in (("train", images if train_images is None else train_images), ("t10k", images)):
        for kind, array in (("images-idx3", imgs), ("labels-idx1", labels)):
            data = _idx_bytes(array)
            path = root / f"{prefix}-{kind}-ubyte{suffix}"
            (gzip.open if compress else open)(path, "wb").write(data)
    return root


def _one_line(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message


def test_truncated_gzip(tmp_path):
    _write_mnist(tmp_path, compress=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(UserError) as exc_info:
        load_data(f"mnist:{tmp_path}")
    _one_line(exc_info, path, "gzip", "download it again")


def test_not_gzip_at_all(tmp_path):
    _write_mnist(tmp_path, compress=True)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"this is not gzip data at all")
    with pytest.raises(UserError) as exc_info:
        load_data(f"mnist:{tmp_path}")
    _one_line(exc_info, path, "gzip")


@pytest.mark.parametrize("data, message", [
    (b"\x08\x08\x08\x01\x00\x00\x00\x02ab", "bad magic"),
    (b"\x00\x00\x08\x03\x00\x00", "damaged IDX header"),
    (_idx_bytes(np.zeros((4, 2, 2)))[:-3], "truncated"),
    (_idx_bytes(np.zeros((4, 2, 2))) + b"xx", "longer than its header"),
])
def test_bad_idx_content(tmp_path, data, message):
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(data)
    with pytest.raises(UserError) as exc_info:
        read_idx(path)
    _one_line(exc_info, path, message)


def test_idx_shape_must_fit_the_file(tmp_path):
    _write_mnist(tmp_path, train_images=np.zeros(12, dtype=np.uint8))  # 1-D where images belong
    with pytest.raises(UserError) as exc_info:
        load_data(f"mnist:{tmp_path}")
    _one_line(exc_info, tmp_path / "train-images-idx3-ubyte", "not images")


def test_idx_label_out_of_range(tmp_path):
    labels = np.zeros(12, dtype=np.uint8)
    labels[7] = 200
    _write_mnist(tmp_path, labels=labels)
    with pytest.raises(UserError) as exc_info:
        load_data(f"mnist:{tmp_path}")
    _one_line(exc_info, tmp_path / "train-labels-idx1-ubyte", "label 200", "0..9")


def test_idx_empty_split(tmp_path):
    empty = np.zeros((0, 28, 28), dtype=np.uint8)
    _write_mnist(tmp_path, labels=np.zeros(0, dtype=np.uint8), train_images=empty)
    with pytest.raises(UserError) as exc_info:
        load_data(f"mnist:{tmp_path}")
    _one_line(exc_info, "train-labels-idx1-ubyte", "no images")


def test_idx_missing_and_unreadable_files(tmp_path, monkeypatch):
    _write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(UserError, match="no t10k-labels-idx1-ubyte"):
        load_data(f"mnist:{tmp_path}")

    def denied(path, mode="r"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(idx_module, "open", denied, raising=False)  # chmod is no barrier for root
    with pytest.raises(UserError) as exc_info:
        read_idx(tmp_path / "train-images-idx3-ubyte")
    _one_line(exc_info, tmp_path / "train-images-idx3-ubyte", "permission")


@pytest.mark.parametrize("bad_label", [10, -1])
def test_cifar_label_out_of_range(tmp_path, bad_label):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [0, 3, bad_label if name == "data_batch_3" else 9, 1]
        batch = {"data": np.zeros((4, 3072), dtype=np.uint8), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(UserError) as exc_info:
        load_data(f"cifar10:{tmp_path}")
    _one_line(exc_info, folder / "data_batch_3", f"label {bad_label}")


def _folder(root, classes=("cat", "dog"), per_class=2, size=16):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.jpg")
    return root


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_jpeg_is_reported_before_training(tmp_path, damage):
    _folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "1.jpg"
    bad.write_bytes(b"not a jpeg" if damage == "garbage" else bad.read_bytes()[:200])
    with pytest.raises(UserError) as exc_info:
        load_data(f"folder:{tmp_path}")
    _one_line(exc_info, bad, "not a readable image", "remove or replace it")


def test_corrupt_jpeg_found_during_training_names_the_file(tmp_path):
    _folder(tmp_path)
    bundle = load_data(f"folder:{tmp_path}")
    bad = tmp_path / "train" / "cat" / "1.jpg"
    bad.write_bytes(b"broken later")
    with pytest.raises(CorruptImageError) as exc_info:
        bundle.train[1]
    _one_line(exc_info, bad)
    # Raised in a DataLoader worker, it is re-raised in the parent: still a one-line UserError.
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=4, num_workers=1)
    with pytest.raises(UserError) as exc_info:
        next(iter(loader))
    _one_line(exc_info, bad, "not a readable image")


def test_one_class_folder_is_refused(tmp_path):
    _folder(tmp_path, classes=("only",))
    with pytest.raises(UserError) as exc_info:
        load_data(f"folder:{tmp_path}")
    _one_line(exc_info, tmp_path / "train", "at least 2")


def test_empty_class_folder_and_empty_split(tmp_path):
    _folder(tmp_path)
    (tmp_path / "val" / "bird").mkdir()
    (tmp_path / "train" / "bird").mkdir()
    with pytest.raises(UserError) as exc_info:
        load_data(f"folder:{tmp_path}")
    _one_line(exc_info, "bird", "one sub-folder per class")


def test_folder_splits_must_have_the_same_classes(tmp_path):
    _folder(tmp_path)
    (tmp_path / "val" / "dog" / "0.jpg").rename(tmp_path / "val" / "cat" / "9.jpg")
    (tmp_path / "val" / "dog" / "1.jpg").unlink()
    (tmp_path / "val" / "dog").rmdir()
    with pytest.raises(UserError, match="different class folders"):
        load_data(f"folder:{tmp_path}")
