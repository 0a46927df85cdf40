"""Image folders of any size: native size detection, small-image path, ImageNet path, override."""

import numpy as np
import pytest
import torch
from PIL import Image

from pssnet.data import detect_image_size, load_data

MEAN = np.array([0.485, 0.456, 0.406])[:, None, None]
STD = np.array([0.229, 0.224, 0.225])[:, None, None]


def _write_folder(root, size, per_class=3, classes=("cat", "dog"), fmt="png", splits=("train", "val")):
    rng = np.random.default_rng(0)
    written = {}
    for split in splits:
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                width, height = (size, size) if isinstance(size, int) else size
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                path = root / split / cls / f"{i}.{fmt}"
                Image.fromarray(pixels).save(path)
                written[path] = pixels
    return written


def test_detected_size_is_the_median_shorter_side(tmp_path):
    paths = []
    for i, (w, h) in enumerate([(20, 50), (60, 30), (40, 45), (33, 90), (100, 70)]):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(np.zeros((h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    assert detect_image_size(paths) == (33, 5)  # shorter sides 20, 30, 40, 33, 70
    assert detect_image_size(paths, limit=3)[1] == 3


def test_small_images_keep_their_size_and_get_cifar_augmentation(tmp_path):
    written = _write_folder(tmp_path, 32)
    bundle = load_data(f"folder:{tmp_path}")
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (2, 3, 32)
    assert "32 px images (detected from 6 files)" in bundle.description
    assert "small-input supernet" in bundle.description and "pad-crop+flip" in bundle.description
    # Evaluation: the image itself, normalised, without any resizing.
    first = written[tmp_path / "val" / "cat" / "0.png"].transpose(2, 0, 1) / 255.0
    assert np.allclose(bundle.test[0][0].numpy(), (first - MEAN) / STD, atol=1e-5)
    # Training: a shift by at most 4 px of the zero-padded image, maybe flipped.
    clean = bundle.train_eval[1][0].numpy()
    raw = written[tmp_path / "train" / "cat" / "1.png"].transpose(2, 0, 1) / 255.0
    assert np.allclose(clean, (raw - MEAN) / STD, atol=1e-5)  # train_eval: not augmented
    padded = np.broadcast_to((0 - MEAN) / STD, (3, 40, 40)).copy()
    padded[:, 4:36, 4:36] = clean
    candidates = [np.flip(padded, 2) if flip else padded for flip in (False, True)]
    for seed in range(5):
        torch.manual_seed(seed)
        x = bundle.train[1][0].numpy()
        assert x.shape == (3, 32, 32)
        assert any(np.allclose(x, c[:, dy:dy + 32, dx:dx + 32], atol=1e-5)
                   for c in candidates for dy in range(9) for dx in range(9))


def test_image_size_overrides_the_native_size(tmp_path):
    _write_folder(tmp_path, 32, fmt="jpg")
    bundle = load_data(f"folder:{tmp_path}", image_size=48)
    assert bundle.image_size == 48 and bundle.train[0][0].shape == (3, 48, 48)
    assert bundle.test[0][0].shape == (3, 48, 48)
    assert "image_size 48 (the images are 32 px)" in bundle.description


@pytest.mark.parametrize("native, trained", [(96, 96), (300, 224)])
def test_large_images_get_the_imagenet_recipe(tmp_path, native, trained):
    _write_folder(tmp_path, (native + 20, native), per_class=2)
    bundle = load_data(f"folder:{tmp_path}")
    assert bundle.image_size == trained
    assert f"{native} px images" in bundle.description and f"trained at {trained} px" in bundle.description
    assert "colour-jitter+lighting" in bundle.description and "small-input" not in bundle.description
    # The workers' part: a uint8 crop and its augmentation parameters, a function of the seed.
    torch.manual_seed(3)
    x = bundle.train[0][0]
    torch.manual_seed(3)
    again = bundle.train[0][0]
    assert x.pixels.shape == (3, trained, trained) and x.pixels.dtype == torch.uint8
    assert torch.equal(x.pixels, again.pixels) and torch.equal(x.params, again.params)
    # The device's part finishes a batch of them as normalised float32.
    images, labels = bundle.device_stage.collate([bundle.train[0], bundle.train[1]])
    finished = bundle.device_stage(images)
    assert finished.shape == (2, 3, trained, trained) and finished.dtype == torch.float32
    assert labels.tolist() == [bundle.train.samples[0][1], bundle.train.samples[1][1]]
    assert bundle.test[0][0].shape == (3, trained, trained)


@pytest.mark.parametrize("bad", [0, -5, 2.5, "32"])
def test_bad_image_size(tmp_path, bad):
    from pssnet.errors import UserError

    _write_folder(tmp_path, 32, per_class=1)
    with pytest.raises(UserError, match="image size"):
        load_data(f"folder:{tmp_path}", image_size=bad)


def test_the_fingerprint_follows_a_moved_folder_and_sees_renamed_or_added_files(tmp_path):
    from pssnet.data import data_fingerprint

    _write_folder(tmp_path / "a", 20)
    before = data_fingerprint(load_data(f"folder:{tmp_path / 'a'}"))
    (tmp_path / "a").rename(tmp_path / "b")
    assert data_fingerprint(load_data(f"folder:{tmp_path / 'b'}")) == before
    assert data_fingerprint(load_data(f"folder:{tmp_path / 'b'}", image_size=16)) != before
    (tmp_path / "b" / "train" / "cat" / "0.png").rename(tmp_path / "b" / "train" / "cat" / "9.png")
    renamed = data_fingerprint(load_data(f"folder:{tmp_path / 'b'}"))
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "b" / "val" / "dog" / "7.png")
    added = data_fingerprint(load_data(f"folder:{tmp_path / 'b'}"))
    assert len({before, renamed, added}) == 3


def test_the_fingerprint_of_in_memory_data_sees_one_pixel():
    from pssnet.data import data_fingerprint

    data = load_data("fashion-mnist-mini")
    before = data_fingerprint(data)
    assert before == data_fingerprint(load_data("fashion-mnist-mini")) and before.startswith("v1:")
    data.test.images[3, 0, 5, 5] ^= 1
    assert data_fingerprint(data) != before
