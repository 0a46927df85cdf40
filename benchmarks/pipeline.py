"""Input pipeline: images per second of one worker core, ours against the reference's.

    python benchmarks/pipeline.py --json p.json

Generates (or reuses, ``--data-dir``) a seeded folder of 500x375 synthetic photographs as JPEGs
(``synthetic_jpegs.py``) and measures, interleaved batch by batch in one process with one torch
thread, what a DataLoader worker does per image plus its collate:

- ``reference``: the PSS-Net reference's pipeline, re-implemented in ``reference_pipeline.py``
  (PIL decode, random resized crop, colour jitter, lighting, flip per image; uint8 collate);
- ``ours``: ``folder:`` training data as the trainer loads it (per-sample seeding; read, draw,
  decode, crop and resize; uint8 collate with the parameters), colour, lighting, flip and
  normalisation being left to the training device;
- ``previous``: our per-image pipeline before this one (``imagenet_train_transform``: the same
  augmentation per image in the worker, float32 out), for the record.

Then, on the CPU, the device parts: the reference's normalisation, and our batched colour
jitter, lighting, flip and normalisation. ``ours_total_images_per_s_cpu`` counts both parts
(a CPU-only run must not get slower: ``ours_total_over_reference_cpu`` >= 1.0).

Ratios are medians of per-batch ratios (machine noise hits both alike); rates are medians. The
device parts work on the latest batch their worker variant made (same size, same kind).
``draft_speedup_large`` repeats ours on 1000x750 pictures with and without reduced-size JPEG
decoding (libjpeg DCT scaling; it cannot apply at 500x375, where no 224 px crop is downscaled
by 2 or more).
"""

from __future__ import annotations

import pathlib
import statistics
import tempfile
from typing import Callable

import numpy as np
import torch
from torch.utils.data import default_collate

from _common import interleaved_times, parse_args, report

import reference_pipeline as reference
from synthetic_jpegs import write_image_folder

from pssnet.data import load_data
from pssnet.data.folder_train import FolderTrainTransform
from pssnet.data.transforms import imagenet_train_transform
from pssnet.training.data_order import EpochView

SIZE = 224


def _options(parser) -> None:
    parser.add_argument("--images", type=int, default=256, help="training pictures generated (default 256)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=16, help="batches timed per variant")
    parser.add_argument("--large-images", type=int, default=48, help="1000x750 pictures for the draft lever (0: skip)")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None,
                        help="keep the generated folders here (reused when present)")
    parser.add_argument("--seed", type=int, default=0)


def _folder(base: pathlib.Path, name: str, count: int, size: tuple[int, int], seed: int) -> pathlib.Path:
    root = base / name
    if not (root / "train").is_dir():
        write_image_folder(root, classes=4, train_per_class=count // 4, val_per_class=2, size=size, seed=seed)
    return root


def _seeded(dataset, index: int, seed: int):
    """An item as the trainer's per-sample seeding makes it (``EpochView``)."""
    return EpochView(dataset, np.array([index]), np.array([seed]))[0]


def _variants(root: pathlib.Path, batch: int, seed: int) -> tuple[dict[str, Callable[[int], object]], dict]:
    """The timed functions (each takes a batch number) and the batches they produce."""
    ours = load_data(f"folder:{root}", SIZE)
    stage = ours.device_stage
    paths = [path for path, _ in ours.train.samples]
    ref_transform = reference.transform(SIZE)
    previous = imagenet_train_transform(SIZE)
    made: dict = {}

    def indices(i: int) -> range:
        start = (i * batch) % (len(paths) - batch + 1)
        return range(start, start + batch)

    def run_reference(i: int) -> None:
        made["reference"] = reference.collate([ref_transform(reference.load(paths[k])) for k in indices(i)])

    def run_ours(i: int) -> None:
        made["ours"] = stage.collate([_seeded(ours.train, k, seed + k) for k in indices(i)])[0]

    def run_previous(i: int) -> None:
        default_collate([previous(reference.load(paths[k])) for k in indices(i)])

    def device_reference(i: int) -> None:
        reference.normalise(made["reference"])

    def device_ours(i: int) -> None:
        stage(made["ours"])

    workers = {"reference": run_reference, "ours": run_ours, "previous": run_previous}
    return workers, {"reference": device_reference, "ours": device_ours}


def _draft_speedup(root: pathlib.Path, batch: int, repeats: int) -> float:
    """Median per-batch time of ours without / with reduced-size decoding on large pictures."""
    dataset = load_data(f"folder:{root}", SIZE).train
    drafted, full = FolderTrainTransform(SIZE), FolderTrainTransform(SIZE, draft=False)
    paths = [path for path, _ in dataset.samples]

    def run(transform: FolderTrainTransform) -> Callable[[int], object]:
        def go(i: int) -> None:
            start = (i * batch) % (len(paths) - batch + 1)
            for k in range(start, start + batch):
                torch.default_generator.manual_seed(k)
                transform(paths[k])
        return go

    times = interleaved_times({"draft": run(drafted), "full": run(full)}, repeats)
    return statistics.median(f / d for d, f in zip(times["draft"], times["full"]))


def main() -> None:
    args = parse_args(__doc__.split("\n\n")[0], _options)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.data_dir or pathlib.Path(tmp)
        root = _folder(base, "jpeg-500x375", args.images, (500, 375), args.seed)
        workers, devices = _variants(root, args.batch_size, args.seed)
        # One round: every worker variant, then both device parts on the batches just made.
        times = interleaved_times({**workers, **{f"device_{k}": fn for k, fn in devices.items()}}, args.repeats)
        large = args.large_images and _folder(base, "jpeg-1000x750", args.large_images, (1000, 750), args.seed + 1)
        draft = _draft_speedup(large, min(args.batch_size, args.large_images), max(4, args.repeats // 2)) \
            if large else None
    _report(args, times, draft)


def _report(args, times: dict[str, list[float]], draft) -> None:
    b = args.batch_size
    rate = {k: b / statistics.median(v) for k, v in times.items()}
    total = {k: [w + d for w, d in zip(times[k], times[f"device_{k}"])] for k in ("reference", "ours")}
    results = {
        "reference_images_per_s": rate["reference"],
        "ours_images_per_s": rate["ours"],
        "ours_over_reference": statistics.median(r / o for r, o in zip(times["reference"], times["ours"])),
        "previous_images_per_s": rate["previous"],
        "reference_total_images_per_s_cpu": b / statistics.median(total["reference"]),
        "ours_total_images_per_s_cpu": b / statistics.median(total["ours"]),
        "ours_total_over_reference_cpu": statistics.median(r / o for r, o in zip(total["reference"], total["ours"])),
        "ours_device_images_per_s_cpu": rate["device_ours"],
        "reference_device_images_per_s_cpu": rate["device_reference"],
        "batch_size": b, "repeats": args.repeats, "images": args.images,
    }
    if draft is not None:
        results["draft_speedup_large"] = draft
    rows = [("reference_images_per_s", f"{results['reference_images_per_s']:.1f}", "(one core)"),
            ("ours_images_per_s", f"{results['ours_images_per_s']:.1f}", "(one core)"),
            ("ours_over_reference", f"{results['ours_over_reference']:.2f}", ">= 1.5"),
            ("previous_images_per_s", f"{results['previous_images_per_s']:.1f}", "(before: float32 per image)"),
            ("reference_total_images_per_s_cpu", f"{results['reference_total_images_per_s_cpu']:.1f}", "(worker + device)"),
            ("ours_total_images_per_s_cpu", f"{results['ours_total_images_per_s_cpu']:.1f}", "(worker + device)"),
            ("ours_total_over_reference_cpu", f"{results['ours_total_over_reference_cpu']:.2f}", ">= 1.0")]
    if draft is not None:
        rows.append(("draft_speedup_large", f"{draft:.2f}", "> 1 (1000x750 pictures)"))
    report("input pipeline, images per second of one core (500x375 JPEGs -> 224 px)", rows, results, args.json)


if __name__ == "__main__":
    main()
