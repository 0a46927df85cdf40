import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from pssnet.data import load_data, read_idx
from pssnet.errors import UserError


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_mini_bundle_items():
    bundle = load_data("fashion-mnist-mini")
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (10, 1, 28)
    assert (len(bundle.train), len(bundle.train_eval), len(bundle.test)) == (6000, 6000, 1000)
    x, y = bundle.test[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    raw = np.load(bundle_path())["test_images"][0] / 255.0
    assert torch.allclose(x[0], (torch.from_numpy(raw).float() - 0.2860) / 0.3530, atol=1e-5)
    eval_x, _ = bundle.train_eval[3]
    assert torch.equal(eval_x, bundle.train_eval[3][0])  # evaluation transform: deterministic


def bundle_path():
    from pssnet.data.datasets import MINI_PATH

    return MINI_PATH


@pytest.mark.parametrize("compress", [True, False])
def test_idx_directory(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 20, dtype=np.uint8)
    suffix = ".gz" if compress else ""
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    assert np.array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), images)
    bundle = load_data(f"mnist:{tmp_path}")
    assert len(bundle.train) == 20 and bundle.test[5][1] == int(labels[5])
    torch.manual_seed(0)
    augmented, _ = bundle.train[5]
    assert augmented.shape == (1, 28, 28)  # random crop with padding keeps the size


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / cls / f"{i}.png")
    bundle = load_data(f"folder:{tmp_path}", image_size=32)
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (2, 3, 32)
    x, y = bundle.train[3]
    assert x.shape == (3, 32, 32) and y == 1
    assert bundle.test[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("spec, message", [
    ("imagenet", "unknown data spec"), ("mnist", "needs a directory"), ("cifar10:/nonexistent", "does not exist"),
    ("fashion-mnist:/nonexistent", "does not exist"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_data(spec)


def test_directories_without_expected_layout(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_data(f"cifar10:{tmp_path}")
    with pytest.raises(UserError, match="train/ and val/"):
        load_data(f"folder:{tmp_path}")


def _write_cifar10(root, payload=None):
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [0, 3, 9, 1],
                 "batch_label": name}
        batches[name] = batch
        with open(folder / name, "wb") as f:
            pickle.dump(payload if payload is not None and name == "test_batch" else batch, f, protocol=2)
    return batches


def test_cifar_batches_are_read_as_arrays(tmp_path):
    batches = _write_cifar10(tmp_path)
    data = load_data(f"cifar10:{tmp_path}")
    assert (data.num_classes, data.in_chans, data.image_size) == (10, 3, 32)
    assert len(data.train) == 20 and len(data.test) == 4
    # The file's rows hold the red, green and blue planes row-major; the dataset keeps [C, H, W].
    raw = batches["test_batch"]["data"][1]
    assert torch.equal(data.test.images[1], torch.from_numpy(raw.reshape(3, 32, 32)))
    assert data.test.images[1, 1, 2, 5] == raw[1024 + 2 * 32 + 5]  # green, row 2, column 5
    assert data.test.labels.tolist() == [0, 3, 9, 1]


class _Exploit:
    def __reduce__(self):
        import os

        return os.system, ("touch pwned",)


def test_cifar_reader_refuses_code_in_pickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_cifar10(tmp_path, payload={"data": _Exploit(), "labels": [0]})
    with pytest.raises(UserError, match="refusing to load .*system"):
        load_data(f"cifar10:{tmp_path}")
    assert not (tmp_path / "pwned").exists()
