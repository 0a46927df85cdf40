"""The folder training pipeline split between workers and the training device: the same
augmentation as the reference's per-image pipeline (statistically, and image by image for given
parameters), device decoding with the workers' semantics, the data-wait metric, exact resume.

The reference re-implementation and the JPEG generator live in ``benchmarks/`` (the pipeline
benchmark measures against the same code); this module puts that folder on ``sys.path``.
"""

import json
import pathlib
import shutil
import sys
import time

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from pssnet.cli import main
from pssnet.data import CorruptImageError
from pssnet.data.device_stage import BatchAugment, DeviceStage, decode_and_crop, default_workers, device_stage_for
from pssnet.data.folder_train import (ALPHA, FLIP, ORDER, EncodedSample, FolderTrainTransform, TrainSample,
                                      draw_params)
from pssnet.data.transforms import IMAGENET_EIGVALS, IMAGENET_EIGVECS, IMAGENET_MEAN_STD
from pssnet.errors import UserError
from pssnet.training.data_wait import DataWait

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_pipeline as reference  # noqa: E402
from synthetic_jpegs import jpeg_bytes, synthetic_photo, write_image_folder  # noqa: E402

MEAN, STD = IMAGENET_MEAN_STD
CPU = torch.device("cpu")
# torchvision 0.29 marks its image decoders deprecated (TorchCodec replaces them); known, not news.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four 200x150 JPEG photographs, one 1000x750 one (large enough for reduced-size decoding
    at 64 px) and a PNG."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    paths = {}
    for name, size in [("a", (200, 150)), ("b", (200, 150)), ("c", (150, 200)), ("d", (200, 150)),
                       ("large", (1000, 750))]:
        paths[name] = root / f"{name}.jpg"
        paths[name].write_bytes(jpeg_bytes(synthetic_photo(rng, *size)))
    paths["png"] = root / "e.png"
    synthetic_photo(rng, 200, 150).save(paths["png"])
    return {k: str(v) for k, v in paths.items()}


def _sample(transform, path, seed):
    torch.manual_seed(seed)
    return transform(path)


def _finish(samples, size):
    """A batch of EncodedSamples decoded and cropped on the CPU, as the device path does."""
    batch = DeviceStage(FolderTrainTransform(size, decode_on_device=True), MEAN, STD).collate(
        [(s, 0) for s in samples])[0]
    return decode_and_crop(batch, size, CPU)


# -- the device's batched augmentation ----------------------------------------------------------
def _per_image(pixels, params):
    """torchvision's colour ops on one float image in the sample's order, lighting, flip, normalise."""
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
    x = pixels.float() / 255
    for op in params[ORDER].long().tolist():
        x = ops[op](x, float(params[op]))
    shift = torch.tensor(IMAGENET_EIGVECS) @ (params[ALPHA] * torch.tensor(IMAGENET_EIGVALS))
    x = x + shift.view(3, 1, 1)
    if params[FLIP] > 0.5:
        x = x.flip(-1)
    return TF.normalize(x, list(MEAN), list(STD))


def test_batched_augmentation_is_torchvisions_per_image_with_each_samples_parameters():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (12, 3, 10, 14), dtype=torch.uint8, generator=generator)
    params = torch.stack([_sample(lambda _: draw_params(), None, seed) for seed in range(12)])
    orders = {tuple(p[ORDER].long().tolist()) for p in params}
    assert len(orders) >= 4 and 0 < params[:, FLIP].sum() < 12  # the draws cover several orders and both flips
    params[0, :3] = torch.tensor([1.4, 0.6, 1.4])  # clamping at both ends
    out = BatchAugment(MEAN, STD)(pixels, params)
    assert out.shape == (12, 3, 10, 14) and out.dtype == torch.float32
    for i in range(12):
        assert torch.allclose(out[i], _per_image(pixels[i], params[i]), atol=2e-5), i
    # The CPU's chunks and a whole batch (as on a GPU) agree.
    whole = BatchAugment(MEAN, STD)
    whole.CPU_CHUNK = 12
    assert torch.allclose(whole(pixels, params), out, atol=1e-6)


def test_the_same_parameters_give_the_reference_pipelines_image(photos):
    """Crop, colour jitter and flip as the reference's PIL steps make them, to within the uint8
    rounding of PIL's steps (which truncate); lighting is the listed deliberate difference (the reference adds a
    [0, 1]-scale shift to 0..255 pixels, moving them by 0 or -1), so it is left out here."""
    size = 64
    worker = FolderTrainTransform(size, decode_on_device=True)
    augment = BatchAugment(MEAN, STD)
    levels = torch.tensor(STD).view(3, 1, 1) * 255
    for seed in range(12):
        path = photos["abcd"[seed % 4]]
        sample = _sample(worker, path, seed)
        params = sample.params.clone()
        params[ALPHA] = 0
        ours = augment(_finish([sample], size), params[None])[0]
        image = reference.apply(reference.load(path), size, sample.box.tolist(), params[:3].tolist(),
                                params[ORDER].long().tolist(), [0, 0, 0], bool(params[FLIP] > 0.5))
        theirs = reference.normalise(reference.collate([image]))[0]
        difference = (ours - theirs) * levels  # in 0..255 levels
        bias = difference.mean()
        # PIL's uint8 steps each round down, by about 0.4 levels on average: ours is a little brighter.
        assert 0 <= bias < 1.8, seed
        assert (difference - bias).abs().mean() < 1.0 and difference.abs().max() < 6, seed


# -- the distribution of the augmentation -------------------------------------------------------
def _ks_distance(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    points = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def _our_draws(path, count, width, height):
    worker = FolderTrainTransform(224, decode_on_device=True)
    rows = []
    for seed in range(count):
        sample = _sample(worker, path, 10_000 + seed)
        _, _, h, w = sample.box.tolist()
        rows.append([h * w / (width * height), w / h, *sample.params.tolist()])
    table = np.array(rows)
    order = table[:, 2 + ORDER.start:2 + ORDER.stop].astype(int)
    return {"crop_scale": table[:, 0], "crop_aspect": table[:, 1], "brightness": table[:, 2], "contrast": table[:, 3],
            "saturation": table[:, 4], "order": 9 * order[:, 0] + 3 * order[:, 1] + order[:, 2],
            "alpha": table[:, 2 + ALPHA.start:2 + ALPHA.stop], "flip": table[:, 2 + FLIP]}


def test_augmentation_parameters_follow_the_references_distribution(tmp_path):
    # A 500x375 JPEG, as the benchmark's: the crop is drawn from the header's size.
    path = tmp_path / "p.jpg"
    path.write_bytes(jpeg_bytes(synthetic_photo(np.random.default_rng(1), 500, 375)))
    n = 2000
    ours = _our_draws(str(path), n, 500, 375)
    theirs = reference.parameter_draws(n, 500, 375, seed=1)
    # KS distance below its 0.1 % critical value, 1.95 sqrt(2 / n) (the seeds are fixed: no flakiness).
    critical = 1.95 * np.sqrt(2 / n)
    for key in ("crop_scale", "crop_aspect", "brightness", "contrast", "saturation"):
        assert _ks_distance(ours[key], theirs[key]) < critical, key
    for k in range(3):
        assert _ks_distance(ours["alpha"][:, k], theirs["alpha"][:, k]) < critical, f"alpha {k}"
    # Ranges as the recipe says them.
    assert 0.245 <= ours["crop_scale"].min() and ours["crop_scale"].max() <= 1.0  # w, h are rounded
    assert 3 / 4 - 0.02 <= ours["crop_aspect"].min() and ours["crop_aspect"].max() <= 4 / 3 + 0.02
    for key in ("brightness", "contrast", "saturation"):
        assert 0.6 <= ours[key].min() and ours[key].max() <= 1.4
    assert abs(ours["alpha"].std() - 0.1) < 0.005 and abs(theirs["alpha"].std() - 0.1) < 0.005
    # The six orders of the three colour ops: the same (uniform) frequencies; chi-square of
    # homogeneity with 5 degrees of freedom below its 0.1 % critical value 20.5.
    permutations = [9 * a + 3 * b + c for a, b, c in ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))]
    counts = np.array([[np.sum(d["order"] == p) for p in permutations] for d in (ours, theirs)])
    assert counts.sum() == 2 * n
    expected = counts.sum(0, keepdims=True) * counts.sum(1, keepdims=True) / counts.sum()
    assert ((counts - expected) ** 2 / expected).sum() < 20.5
    # Flip: a fair coin in both.
    for d in (ours, theirs):
        assert abs(d["flip"].mean() - 0.5) < 4 * np.sqrt(0.25 / n)


# -- decoding on the device --------------------------------------------------------------------
def test_device_decoding_on_the_cpu_is_the_workers_decoding(photos):
    size = 64
    worker, encoder = FolderTrainTransform(size, draft=False), FolderTrainTransform(size, decode_on_device=True)
    for seed, name in enumerate(["a", "b", "c", "png"]):
        decoded, encoded = _sample(worker, photos[name], seed), _sample(encoder, photos[name], seed)
        assert isinstance(decoded, TrainSample) and isinstance(encoded, EncodedSample)
        assert torch.equal(decoded.params, encoded.params)  # the same draws, box included
        assert encoded.data.dim() == (1 if name != "png" else 3)  # a PNG is decoded by the worker
        assert torch.equal(_finish([encoded], size)[0], decoded.pixels), name
    # A batch: one decoder call on the device, the same crops.
    samples = [_sample(encoder, photos[n], 7) for n in "abcd"]
    singles = torch.cat([_finish([s], size) for s in samples])
    assert torch.equal(_finish(samples, size), singles)


def test_reduced_size_decoding_keeps_the_crop(photos):
    """The worker decodes a large JPEG at 1/2..1/8 of its size when the crop is downscaled that
    much anyway; the crop box is mapped onto the smaller image, so the result is the full decode's
    up to the decoder's rounding."""
    size = 64
    drafted, full = FolderTrainTransform(size), FolderTrainTransform(size, draft=False)
    encoder = FolderTrainTransform(size, decode_on_device=True)
    seen = 0
    for seed in range(8):
        box = _sample(encoder, photos["large"], seed).box.tolist()
        if min(box[2:]) < 2 * size:
            continue
        seen += 1
        a = _sample(drafted, photos["large"], seed).pixels.float()
        b = _sample(full, photos["large"], seed).pixels.float()
        assert (a - b).abs().mean() < 4 and (a - b).abs().max() < 64  # the grain differs most
        assert torch.equal(_finish([_sample(encoder, photos["large"], seed)], size)[0], b.to(torch.uint8))
    assert seen >= 4


def test_a_damaged_jpeg_is_named_by_the_worker_and_by_device_decoding(tmp_path, photos):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(pathlib.Path(photos["a"]).read_bytes()[:3000])  # header intact, data cut
    with pytest.raises(CorruptImageError) as exc_info:
        _sample(FolderTrainTransform(64), str(bad), 0)
    message = str(exc_info.value)
    assert len(message.splitlines()) == 1 and str(bad) in message and "not a readable image" in message
    encoder = FolderTrainTransform(64, decode_on_device=True)
    with pytest.raises(CorruptImageError, match="bad.jpg is not a readable image"):
        _finish([_sample(encoder, photos["b"], 0), _sample(encoder, str(bad), 1)], 64)


def test_decode_on_device_needs_cuda_and_folder_data(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--preset", "mini-mbv2", "--device", "cpu", "--decode-on-device", "--out", str(out),
                 "--no-progress", "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("this run trains on cpu, so leave it out") and "--decode-on-device" in err[-1]
    assert not out.exists()
    with pytest.raises(UserError, match="applies to ImageNet-style folder data"):
        device_stage_for(None, "fashion-mnist-mini", torch.device("cuda"), True)
    assert device_stage_for(None, "fashion-mnist-mini", CPU, False) is None


def test_default_workers(monkeypatch):
    assert default_workers(CPU) == 0
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers(torch.device("cuda")) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_workers(torch.device("cuda")) == 1  # 2 cores per process: one worker
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(torch.device("cuda")) == 3


# -- the training loop --------------------------------------------------------------------------
class _SlowLoader:
    def __init__(self, batches, seconds):
        self.batches, self.seconds = batches, seconds

    def __iter__(self):
        for i in range(self.batches):
            time.sleep(self.seconds)
            yield torch.full((2, 3), float(i)), torch.tensor([i, i])


def test_data_wait_counts_the_time_blocked_in_the_loader():
    wait = DataWait(CPU)
    start = time.perf_counter()
    for images, labels in wait.batches(_SlowLoader(4, 0.05)):
        time.sleep(0.05)  # the "step": not waiting
    total = time.perf_counter() - start
    waited = wait.take()
    assert 0.2 <= waited < 0.2 + 0.5 * (total - 0.4) + 0.05
    assert wait.take() == 0.0


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iteration"], r["loss_largest"], r["loss_sampled"], r["subnet"]) for r in rows if "loss_largest" in r]


def _folder(root):
    write_image_folder(root, classes=2, train_per_class=16, val_per_class=3, size=(120, 90), distinct=8)
    return root


@pytest.mark.slow
def test_folder_run_logs_data_wait_and_resumes_exactly_with_another_worker_count(tmp_path):
    data = _folder(tmp_path / "data")
    args = ["train", "--arch", "mobilenet_v2", "--data", f"folder:{data}", "--image-size", "72",
            "--resolutions", "64:72:8", "--constraint", "flops:auto:3", "--batch-size", "4", "--max-iters", "6",
            "--holdout", "0", "--threads", "1", "--map-samples", "3000", "--pool-size", "2", "--log-every", "2",
            "--no-progress", "--checkpoint-iters", "1", "--keep-checkpoints", "10",
            "--map-cache", str(tmp_path / "maps")]
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss_largest" in r]
    assert len(steps) == 3 and all(0 <= r["data_wait_fraction"] <= 1 for r in steps)

    # The same run, as if killed after iteration 3, resumed with two workers.
    killed = tmp_path / "killed"
    shutil.copytree(straight, killed)
    (killed / "final.pt").unlink()
    for path in (killed / "checkpoints").glob("ckpt-*.pt"):
        if int(path.stem.split("-")[1]) > 3:
            path.unlink()
    assert main(["train", "--out", str(killed), "--resume", "--threads", "1", "--no-progress",
                 "--num-workers", "2"]) == 0
    assert json.loads((killed / "config.json").read_text())["resolved"]["num_workers"] == 2
    a = torch.load(straight / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    assert a["iterations"] == b["iterations"] == 6 and a["pools"] == b["pools"]
    assert _losses(straight) == _losses(killed) and len(_losses(killed)) == 3
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
