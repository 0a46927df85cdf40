"""The image transforms: PCA lighting noise, the ImageNet recipe, per-seed determinism."""

import numpy as np
import pytest
import torch
from PIL import Image

from pssnet.data.transforms import (IMAGENET_EIGVALS, IMAGENET_EIGVECS, Lighting, imagenet_eval_transform,
                                    imagenet_train_transform)


def _photo(width, height, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_lighting_adds_one_colour_shift_per_image():
    image = torch.rand(3, 5, 7)
    torch.manual_seed(0)
    out = Lighting(0.1)(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    shift = out - image
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift), atol=1e-6)  # the same for every pixel
    assert shift.abs().max() > 0
    assert torch.equal(Lighting(0.0)(image), image)


def test_lighting_noise_follows_imagenet_principal_components():
    # shift = V (alpha * lambda), alpha ~ N(0, 0.1^2): projected on the (orthonormal) components
    # its standard deviation is 0.1 * lambda_k, and the projections are uncorrelated.
    torch.manual_seed(1)
    lighting, zero = Lighting(0.1), torch.zeros(3, 1, 1)
    shifts = np.stack([lighting(zero).view(3).numpy() for _ in range(20000)])
    vecs = np.array(IMAGENET_EIGVECS)
    projected = np.linalg.solve(vecs, shifts.T).T  # alpha * lambda per draw
    expected_std = 0.1 * np.array(IMAGENET_EIGVALS)
    assert np.allclose(projected.std(0), expected_std, rtol=0.03)
    assert np.all(np.abs(projected.mean(0)) < 4 * expected_std / np.sqrt(len(shifts)))
    corr = np.corrcoef(projected.T)
    assert np.all(np.abs(corr[~np.eye(3, dtype=bool)]) < 0.03)


def test_train_transform_is_a_function_of_the_seed():
    transform, photo = imagenet_train_transform(64), _photo(90, 70)
    outputs = []
    for seed in (5, 5, 6):
        with torch.random.fork_rng(devices=[]):  # as the trainer's per-sample seeding does
            torch.manual_seed(seed)
            outputs.append(transform(photo))
    assert outputs[0].shape == (3, 64, 64) and outputs[0].dtype == torch.float32
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


@pytest.mark.parametrize("size, resize", [(224, 256), (128, 146), (32, 37)])
def test_eval_transform_resizes_then_centre_crops(size, resize):
    photo = _photo(400, 300)
    out = imagenet_eval_transform(size)(photo)
    assert out.shape == (3, size, size)
    # Independent check: PIL resize of the shorter side to `resize`, then the central crop.
    width = int(resize * 400 / 300)
    resized = np.asarray(photo.resize((width, resize), Image.BILINEAR), dtype=np.float32) / 255
    top, left = int(round((resize - size) / 2)), int(round((width - size) / 2))
    crop = resized[top:top + size, left:left + size].transpose(2, 0, 1)
    mean, std = np.array([0.485, 0.456, 0.406])[:, None, None], np.array([0.229, 0.224, 0.225])[:, None, None]
    assert np.abs(out.numpy() - (crop - mean) / std).mean() < 0.05
