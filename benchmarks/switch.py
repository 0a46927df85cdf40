"""Runtime switching and static export: how fast does a deployed supernet change subnets, and
does the exported static subnet run at least as fast as the supernet running the same subnet?

    python benchmarks/switch.py --json bench-switch.json [--bundle runs/demo/adaptive.pt]

Without --bundle, a small-input MobileNetV2 supernet (10 classes, 28 px) with 12 retained subnets
spread over its FLOPs range is used (timings do not depend on training).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from _common import interleaved_medians, parse_args, report

import pssnet
from pssnet.calibration import bn_statistics, recalibrate_bn
from pssnet.deploy import AdaptiveNet, RetainedSubnet, example_input
from pssnet.space import subnets_from_arrays


def synthetic_adaptive(num_subnets: int = 12, seed: int = 0) -> AdaptiveNet:
    """An AdaptiveNet over ``num_subnets`` subnets of increasing FLOPs, BN recalibrated on noise."""
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=1, small_input=True)
    res, widths = net.space.sample_arrays(4000, np.random.default_rng(seed))
    flops = pssnet.flops_array(net, res, widths)
    picks = np.argsort(flops)[np.linspace(0, len(flops) - 1, num_subnets).astype(int)]
    subnets = subnets_from_arrays(res[picks], widths[picks])
    batches = [torch.randn(8, 1, 28, 28) for _ in range(2)]
    stats, entries = [], []
    for slot, s in enumerate(subnets):
        net.set_subnet(s)
        recalibrate_bn(net, batches)
        stats.append(bn_statistics(net))
        resources = {"flops": pssnet.count_flops(net, s), "params": pssnet.count_params(net, s) / 1e6}
        entries.append(RetainedSubnet(s, (f"#{slot}",), resources, 50.0 + slot, 50.0 + slot, slot))
    bank = {name: {"mean": torch.stack([st[name][0] for st in stats]),
                   "var": torch.stack([st[name][1] for st in stats])} for name in stats[0]}
    info = {"model_config": net.config.to_dict(), "image_size": 28}
    return AdaptiveNet(net, entries, bank, info)


def switch_times_us(adaptive: AdaptiveNet, repeats: int) -> list[float]:
    """Time of ``fit_budget`` per call, with every call landing on a different subnet than the last."""
    budgets = sorted({r.resources["flops"] for r in adaptive.subnets})
    order = [budgets[i] for i in np.random.default_rng(0).permutation(np.arange(repeats) % len(budgets))]
    order = [b for i, b in enumerate(order) if i == 0 or b != order[i - 1]]
    times = []
    clock = time.perf_counter_ns
    for b in order:
        t0 = clock()
        adaptive.fit_budget(flops=b)
        times.append((clock() - t0) / 1e3)
    return times


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--bundle", help="adaptive.pt to use instead of a synthetic one"),
        p.add_argument("--batch", type=int, default=32, help="inference batch size (default 32)"),
        p.add_argument("--repeats", type=int, default=50, help="inference timing repeats (default 50)"),
        p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)"),
    ))
    torch.set_num_threads(args.threads)
    adaptive = AdaptiveNet.load(args.bundle) if args.bundle else synthetic_adaptive()
    times = switch_times_us(adaptive, 20000)
    switch_median = statistics.median(times)

    by_flops = sorted(adaptive.subnets, key=lambda r: r.resources["flops"])
    target = by_flops[len(by_flops) // 2]
    static = adaptive.export(target)
    adaptive.switch_to(target)
    x = example_input(adaptive.info["model_config"], adaptive.info.get("image_size"), args.batch)
    with torch.inference_mode():
        medians = interleaved_medians({"supernet": lambda: adaptive(x), "static": lambda: static(x)},
                                      repeats=args.repeats, warmup=3)
        torch.testing.assert_close(static(x), adaptive(x))
    ratio = medians["static"] / medians["supernet"]
    results = {
        "switch_us_median": round(switch_median, 3),
        "switch_us_p90": round(float(np.percentile(times, 90)), 3),
        "switches_timed": len(times),
        "retained_subnets": len(adaptive.subnets),
        "static_over_supernet_inference": round(ratio, 4),
        "supernet_inference_ms": round(1e3 * medians["supernet"], 3),
        "static_inference_ms": round(1e3 * medians["static"], 3),
        "inference_subnet": target.key,
        "inference_flops_m": round(target.resources["flops"], 3),
        "batch": args.batch,
        "threads": args.threads,
    }
    report("Subnet switching and static export", [
        ("switch_us_median", f"{switch_median:.2f} us", "< 50 us"),
        ("switch_us_p90", f"{results['switch_us_p90']:.2f} us", ""),
        ("supernet_inference_ms", f"{results['supernet_inference_ms']:.2f} ms", f"batch {args.batch}"),
        ("static_inference_ms", f"{results['static_inference_ms']:.2f} ms", f"batch {args.batch}"),
        ("static_over_supernet_inference", f"{ratio:.3f}", "<= 1.0"),
    ], results, args.json)


if __name__ == "__main__":
    main()
