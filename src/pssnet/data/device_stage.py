"""The training device's half of folder training: batched colour jitter, PCA lighting, flip and
normalisation of the uint8 crops that the workers send (:mod:`.folder_train`), and optionally
their JPEG decoding (nvJPEG).

Every parameter comes with its sample, drawn in the worker under the sample's seed, so nothing
here is random: a batch's result does not depend on the device, the worker count or the order
in which the samples were batched.

The colour operations are torchvision's on float images (``adjust_brightness``,
``adjust_contrast``, ``adjust_saturation``: a blend towards black, the mean grey or the grey
image, clamped after each), applied in each sample's own order, on the 0..255 scale; lighting
adds ``V (alpha * lambda)`` on the [0, 1] scale, unclamped, as :class:`.transforms.Lighting`.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import torch
from torch.utils.data import default_collate

from ..errors import UserError
from .folder_train import (ALPHA, BRIGHTNESS, CONTRAST, FLIP, ORDER, SATURATION, EncodedSample,
                           FolderTrainTransform, TrainSample, crop_resize, decode_jpeg)
from .image_files import CorruptImageError, describe_unreadable
from .transforms import IMAGENET_EIGVALS, IMAGENET_EIGVECS

GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
MAX_AUTO_WORKERS = 8


class EncodedBatch(NamedTuple):
    """A batch of :class:`EncodedSample`: the byte (or pixel) tensors stay a list."""

    data: list[torch.Tensor]
    boxes: torch.Tensor  # int64 [B, 4]
    params: torch.Tensor  # float32 [B, PARAM_COUNT]
    paths: list[str]


def _grey(x: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` grey image of ``[B, 3, H, W]`` (torchvision's weights)."""
    return (x[:, 0:1] * GREY[0]).add_(x[:, 1:2], alpha=GREY[1]).add_(x[:, 2:3], alpha=GREY[2])


def colour_jitter(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation of float ``[B, 3, H, W]`` images on the 0..255 scale,
    each sample with its own factors and order (``params``); returns a new tensor.

    One pass per position in the order: every sample is blended towards its target for the op
    in that position, ``x' = clamp(f x + (1 - f) t)`` with ``t`` = 0 (brightness), the mean grey
    (contrast) or the grey image (saturation)."""
    shape = (-1, 1, 1, 1)
    for position in range(3):
        op = params[:, ORDER][:, position].long()
        factor = params.gather(1, op.view(-1, 1)).view(shape)
        keep = 1 - factor  # weight of the target
        if bool((op == BRIGHTNESS).all()):
            x = (x * factor).clamp_(0, 255)
            continue
        grey = _grey(x)
        grey_mean = grey.mean(dim=(2, 3), keepdim=True)
        saturation = (op == SATURATION).to(x.dtype).view(shape)
        contrast = (op == CONTRAST).to(x.dtype).view(shape)
        target = torch.addcmul(grey_mean * contrast * keep, grey, saturation * keep)
        x = torch.addcmul(target, x, factor).clamp_(0, 255)
    return x


class BatchAugment:
    """Colour jitter, lighting, flip and normalisation of a uint8 ``[B, 3, H, W]`` batch with its
    ``[B, PARAM_COUNT]`` parameters, on their device; returns normalised float32.

    On a CPU the batch goes through in chunks of ``CPU_CHUNK`` images, whose float copies stay in
    the processor's cache across the dozen passes (measured: 40 % faster than whole batches)."""

    CPU_CHUNK = 8

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.eigvecs = torch.tensor(IMAGENET_EIGVECS, dtype=torch.float32)
        self.eigvals = torch.tensor(IMAGENET_EIGVALS, dtype=torch.float32)

    def __call__(self, pixels: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        device = pixels.device
        params = params.to(device=device, dtype=torch.float32)
        mean, std = self.mean.to(device), self.std.to(device)
        shift = (params[:, ALPHA] * self.eigvals.to(device)) @ self.eigvecs.to(device).T  # [B, 3], 0..1 scale
        # (x / 255 + shift - mean) / std as one multiply-add: x * (1 / (255 std)) + (shift - mean) / std
        bias = ((shift - mean) / std).view(-1, 3, 1, 1)
        scale = (1 / (255 * std)).view(1, 3, 1, 1)
        out = torch.empty(pixels.shape, dtype=torch.float32, device=device)
        step = self.CPU_CHUNK if device.type == "cpu" else max(1, len(pixels))
        for i in range(0, len(pixels), step):
            part = slice(i, i + step)
            x = colour_jitter(pixels[part].float(), params[part])
            flip = (params[part, FLIP] > 0.5).view(-1, 1, 1, 1)
            if bool(flip.any()):
                x = torch.where(flip, x.flip(-1), x)
            torch.addcmul(bias[part], x, scale, out=out[part])
        return out


class DeviceStage:
    """What the training loop does with the loader's batches of folder training data.

    :meth:`collate` batches the workers' samples (the DataLoader's ``collate_fn``),
    :meth:`to_device` copies a batch to the training device (only the copy: the trainer times
    it as waiting for data), and calling the stage finishes the batch there: decodes and crops
    it (with :meth:`decode_on_device`), then :class:`BatchAugment`."""

    def __init__(self, worker: FolderTrainTransform, mean: Sequence[float], std: Sequence[float]) -> None:
        self.worker = worker
        self.augment = BatchAugment(mean, std)

    @property
    def decodes(self) -> bool:
        """Whether JPEG decoding happens on the device."""
        return self.worker.decode_on_device

    def decode_on_device(self) -> None:
        """Let the workers send JPEG bytes and crop boxes; the device decodes and crops."""
        self.worker.decode_on_device = True

    def collate(self, samples: list) -> tuple:
        """The DataLoader's ``collate_fn``: encoded samples keep their variable-size data as a list."""
        if not isinstance(samples[0][0], EncodedSample):
            return default_collate(samples)
        images = [sample for sample, _ in samples]
        labels = torch.tensor([label for _, label in samples], dtype=torch.int64)
        return EncodedBatch([s.data for s in images], torch.stack([s.box for s in images]),
                            torch.stack([s.params for s in images]), [s.path for s in images]), labels

    def to_device(self, batch: tuple, device: torch.device) -> tuple:
        """The batch with its tensors on ``device`` (non-blocking); JPEG bytes and boxes stay on
        the host, where the decoder and the cropping read them."""
        images, labels = batch
        labels = labels.to(device, non_blocking=True)
        if isinstance(images, EncodedBatch):
            return images._replace(params=images.params.to(device, non_blocking=True)), labels
        return TrainSample(images.pixels.to(device, non_blocking=True),
                           images.params.to(device, non_blocking=True)), labels

    def __call__(self, images) -> torch.Tensor:
        """Normalised float32 ``[B, 3, S, S]`` on the device of the batch's parameters."""
        if isinstance(images, EncodedBatch):
            pixels = decode_and_crop(images, self.worker.size, images.params.device)
        else:
            pixels = images.pixels
        return self.augment(pixels, images.params)


def decode_and_crop(batch: EncodedBatch, size: int, device: torch.device) -> torch.Tensor:
    """uint8 ``[B, 3, size, size]`` on ``device``: the JPEG bytes decoded there (one batched
    call), pixels the worker decoded moved there, each cropped and resized as a worker does."""
    images = list(batch.data)
    encoded = [i for i, data in enumerate(images) if data.dim() == 1]
    if encoded:
        decoded = _decode(batch, encoded, device)
        for i, image in zip(encoded, decoded):
            images[i] = image
    boxes = batch.boxes.tolist()
    return torch.stack([crop_resize(image.to(device, non_blocking=True), box, size)
                        for image, box in zip(images, boxes)])


def _decode(batch: EncodedBatch, encoded: list[int], device: torch.device) -> list[torch.Tensor]:
    """The JPEGs ``encoded`` of the batch, decoded on ``device``; where that fails, one by one on
    the CPU, so that a damaged file is named (and one the device's decoder cannot read is still
    decoded)."""
    try:
        return decode_jpeg([batch.data[i] for i in encoded], device=device)
    except RuntimeError:
        pass
    decoded = []
    for i in encoded:
        try:
            decoded.append(decode_jpeg(batch.data[i]))
        except RuntimeError as exc:
            raise CorruptImageError(describe_unreadable(batch.paths[i], exc)) from None
    return decoded


def default_workers(device: torch.device) -> int:
    """Data-loader workers when ``--num-workers`` is not given.

    On CUDA: one worker per CPU core this process may use (cores shared among torchrun's local
    processes), keeping one core for the training process itself, at most 8. On the CPU: 0, the
    samples are prepared in the training process (workers would take cores from the
    computation, which dominates a CPU step by far)."""
    if device.type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(MAX_AUTO_WORKERS, cores // local_processes - 1))


def device_stage_for(stage: Optional[DeviceStage], data_name: str, device: torch.device,
                     decode_on_device: bool) -> Optional[DeviceStage]:
    """The data's device stage (None: its batches arrive ready), set to decode on the device if
    asked; refuses decoding on a CPU device or for data that is not an ImageNet-style folder."""
    if not decode_on_device:
        return stage
    if device.type != "cuda":
        raise UserError("--decode-on-device decodes JPEGs with nvJPEG on a CUDA device; "
                        f"this run trains on {device.type}, so leave it out")
    if stage is None:
        raise UserError(f"--decode-on-device applies to ImageNet-style folder data (images larger than 64 px); "
                        f"{data_name} is decoded in the workers; leave it out")
    stage.decode_on_device()
    return stage
