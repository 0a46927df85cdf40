"""Latency table accuracy: build a table on this CPU, then compare predictions with end-to-end timings.

Builds the per-block table of the small-input MobileNetV2 (10 classes, 1 input channel, default
small space) at batch 1 (``--batch``), then times N random subnets end to end (extracted static
models, eval, no grad, input already at the subnet's resolution). Evaluation subnets are distinct
from the three that calibrate the table's per-network overhead. Table entries and end-to-end
timings use the same sampling (rounds interleaved over all entries or subnets, a few calls each)
and CPU thread count (default 1). Figures are reported for two statistics of the same samples:
``min`` (headline: steadier when other processes share the CPU) and ``median``.
``spearman_e2e_split_half`` is the noise ceiling: the rank correlation of the end-to-end timings
with themselves (alternate rounds against each other); no predictor can rank much better.
``spearman_flops_spread`` ranks N more subnets, one per FLOPs quantile of the space, timed in the
same rounds: the predictor's ranking across the whole range rather than its crowded middle.

    python benchmarks/latency.py --json bench-latency.json
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

from _common import parse_args, report

import numpy as np
import torch

from pssnet import create_supernet, extract_subnet, flops_array
from pssnet.latency import LatencyTable, build_table, calibration_subnets
from pssnet.space import subnets_from_arrays
from pssnet.timing import MeasureSettings, summarize, time_calls


def _extra(parser) -> None:
    parser.add_argument("--subnets", type=int, default=30, help="random subnets timed end to end")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per round (table and end to end)")
    parser.add_argument("--rounds", type=int, default=20, help="rounds per table entry")
    parser.add_argument("--e2e-rounds", type=int, default=40, help="rounds per subnet end to end")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for table and end-to-end timing")
    parser.add_argument("--save-lut", help="also write the built table here")
    parser.add_argument("--batch", type=int, default=1, help="batch size of table and end-to-end inputs")
    parser.add_argument("--seed", type=int, default=0)


def _ranks(values: np.ndarray) -> np.ndarray:
    ranks = np.empty(len(values))
    ranks[np.argsort(values, kind="stable")] = np.arange(len(values))
    return ranks


def _rounds_of(samples: list[float], repeats: int) -> list[float]:
    """Best sample of each round (samples come round by round, ``repeats`` per round)."""
    return [min(samples[i:i + repeats]) for i in range(0, len(samples), repeats)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def _spread_by_flops(net, count: int, seed: int, exclude: set) -> list:
    """``count`` random subnets, one from each FLOPs quantile of 100,000 random draws (the
    predictor plays no part in choosing them)."""
    res, widths = net.space.sample_arrays(100_000, np.random.default_rng(seed + 1))
    flops = flops_array(net, res, widths)
    order = np.argsort(flops, kind="stable")
    chosen = []
    for part in np.array_split(order, count):
        for i in part:
            s = subnets_from_arrays(res[i:i + 1], widths[i:i + 1])[0]
            if s not in exclude:
                chosen.append(s)
                break
    return chosen


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _extra)
    net = create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True).eval()
    settings = MeasureSettings(device="cpu", threads=args.threads, batch=args.batch, warmup=1,
                               repeats=args.repeats, rounds=args.rounds, statistic="min")

    samples: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    table = build_table(net, settings, path=args.save_lut, force=True, progress=False, raw_samples=samples)
    build_seconds = time.perf_counter() - t0

    # Evaluation subnets are random and distinct from the ones that calibrated the overhead.
    rng = random.Random(args.seed)
    calibration = calibration_subnets(net.space)
    subnets: list = []
    while len(subnets) < args.subnets:
        s = net.space.sample(rng)
        if s not in calibration and s not in subnets:
            subnets.append(s)
    spread = _spread_by_flops(net, args.subnets, args.seed, exclude=set(subnets) | set(calibration))
    torch.set_num_threads(args.threads)
    calls = {}
    for s in subnets + spread + calibration:
        model = extract_subnet(net, s).eval()
        x = torch.randn(args.batch, 1, s.resolution, s.resolution)
        calls[s.key] = lambda model=model, x=x: model(x)
    end_to_end = time_calls(calls, replace(settings, rounds=args.e2e_rounds))
    # Noise ceiling: how well two independent halves (alternate rounds) of the end-to-end
    # timings agree with each other in rank.
    halves = [np.array([min(_rounds_of(end_to_end[s.key], args.repeats)[h::2]) for s in subnets]) for h in (0, 1)]

    # The same samples summarised by the median: overhead calibrated like the builder does.
    median_table = LatencyTable({k: summarize(v, "median") for k, v in samples.items()}, table.device_info,
                                table.model_config, table.batch)
    median_table.overhead_ms = float(np.median([summarize(end_to_end[c.key], "median")
                                                - median_table.predict(net.layout, c) for c in calibration]))

    results = {"lut_build_seconds": build_seconds, "lut_entries": len(table), "overhead_ms": table.overhead_ms}
    for statistic, tab in (("min", table), ("median", median_table)):
        measured = np.array([summarize(end_to_end[s.key], statistic) for s in subnets])
        predicted = np.array([tab.predict(net.layout, s) for s in subnets])
        errors = (predicted - measured) / measured
        suffix = "" if statistic == "min" else "_median"
        results.update({
            f"mape{suffix}": float(np.abs(errors).mean() * 100),
            f"spearman{suffix}": spearman(predicted, measured),
            f"mean_bias_pct{suffix}": float(errors.mean() * 100),
            f"mape_without_overhead{suffix}": float(np.abs((predicted - tab.overhead_ms - measured)
                                                           / measured).mean() * 100),
            f"measured_ms_min{suffix}": float(measured.min()),
            f"measured_ms_max{suffix}": float(measured.max()),
        })
        if statistic == "min":
            rows = list(zip(subnets, predicted, measured))
    results["spearman_e2e_split_half"] = spearman(*halves)
    # Random subnets cluster in the middle of the range, where their latencies differ by little more
    # than the timing noise; subnets spread over the FLOPs range test the ranking across it.
    spread_measured = np.array([summarize(end_to_end[s.key], "min") for s in spread])
    spread_predicted = np.array([table.predict(net.layout, s) for s in spread])
    results["spearman_flops_spread"] = spearman(spread_predicted, spread_measured)
    results["mape_flops_spread"] = float(np.abs((spread_predicted - spread_measured) / spread_measured).mean() * 100)
    results["measured_ms_min_flops_spread"] = float(spread_measured.min())
    results["measured_ms_max_flops_spread"] = float(spread_measured.max())
    results.update({"subnets": len(subnets), "threads": args.threads, "rounds": args.rounds,
                    "repeats": args.repeats, "statistic": "min", "batch": args.batch})
    for s, p, m in rows:
        print(f"{s.key:<70} predicted {p:7.3f} ms  measured {m:7.3f} ms  ({(p - m) / m * 100:+5.1f}%)")
    report(f"latency table (small-input MobileNetV2, CPU, batch {args.batch}, {args.threads} thread(s))", [
        ("mape", f"{results['mape']:.2f} %", "<= 10 % (min statistic)"),
        ("spearman", f"{results['spearman']:.3f}", ">= 0.9"),
        ("mean_bias_pct", f"{results['mean_bias_pct']:+.2f} %", "predicted vs measured"),
        ("overhead_ms", f"{table.overhead_ms:.3f}", "calibrated per-network constant"),
        ("mape_without_overhead", f"{results['mape_without_overhead']:.2f} %", "block sums alone"),
        ("mape_median", f"{results['mape_median']:.2f} %", "same samples, median statistic"),
        ("spearman_median", f"{results['spearman_median']:.3f}", ""),
        ("spearman_e2e_split_half", f"{results['spearman_e2e_split_half']:.3f}",
         "noise ceiling: end-to-end vs itself"),
        ("spearman_flops_spread", f"{results['spearman_flops_spread']:.3f}",
         f"{len(spread)} subnets, one per FLOPs quantile"),
        ("mape_flops_spread", f"{results['mape_flops_spread']:.2f} %", ""),
        ("lut_build_seconds", f"{build_seconds:.1f}", f"{len(table)} entries"),
        ("measured range", f"{results['measured_ms_min']:.2f}-{results['measured_ms_max']:.2f} ms", ""),
    ], results, args.json)

if __name__ == "__main__":
    main()
