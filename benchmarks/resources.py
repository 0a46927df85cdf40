"""Resource counting speed and the cost of running subnets through sliced supernet weights.

    python benchmarks/resources.py --json bench-resources.json

Keys: seconds_for_1m_subnets (vectorised FLOPs+params of 1,000,000 MobileNetV1 subnets; target
< 5 s), subnets_per_second, slicing_overhead_ratio (forward+backward of a subnet through the
supernet / the same step on its extracted static model; small-input MobileNetV2, batch 64,
32 px, CPU; target <= 1.10), plus the per-step seconds behind the ratio.
"""

from __future__ import annotations

import random
import time

import numpy as np
import torch
import torch.nn.functional as F

from _common import interleaved_medians, parse_args, report

import pssnet


def time_vectorised_counting(n: int) -> float:
    net = pssnet.create_supernet("mobilenet_v1")
    res, widths = net.space.sample_arrays(n, np.random.default_rng(0))
    t0 = time.perf_counter()
    pssnet.count_arrays(net, res, widths)
    return time.perf_counter() - t0


def time_slicing_overhead(batch: int, repeats: int, subnets: int) -> tuple[float, float]:
    torch.manual_seed(0)
    net = pssnet.create_supernet("mobilenet_v2", num_classes=10, in_chans=3, small_input=True).train()
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    rng = random.Random(0)
    supernet_s, static_s = [], []
    for _ in range(subnets):
        subnet = pssnet.Subnet(32, net.space.sample(rng).widths)
        static = pssnet.extract_subnet(net, subnet).train()

        def supernet_step() -> None:
            net.set_subnet(subnet)
            net.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()

        def static_step() -> None:
            static.zero_grad(set_to_none=True)
            F.cross_entropy(static(x), y).backward()

        medians = interleaved_medians({"supernet": supernet_step, "static": static_step}, repeats, warmup=2)
        supernet_s.append(medians["supernet"])
        static_s.append(medians["static"])
    return float(np.mean(supernet_s)), float(np.mean(static_s))


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda p: (
        p.add_argument("--subnets", type=int, default=1_000_000),
        p.add_argument("--repeats", type=int, default=15),
        p.add_argument("--threads", type=int, default=torch.get_num_threads()),
    ))
    torch.set_num_threads(args.threads)
    count_s = time_vectorised_counting(args.subnets)
    seconds_1m = count_s * 1_000_000 / args.subnets
    supernet_s, static_s = time_slicing_overhead(64, args.repeats, subnets=3)
    ratio = supernet_s / static_s
    results = {
        "seconds_for_1m_subnets": round(seconds_1m, 3),
        "subnets_per_second": round(args.subnets / count_s),
        "slicing_overhead_ratio": round(ratio, 3),
        "supernet_step_seconds": round(supernet_s, 4),
        "static_step_seconds": round(static_s, 4),
        "threads": args.threads,
    }
    report("pssnet resources benchmark", [
        ("seconds_for_1m_subnets (MobileNetV1)", f"{seconds_1m:.2f} s", "< 5 s"),
        ("subnets_per_second", f"{results['subnets_per_second']:,}", ""),
        ("supernet step (MBv2 small, b64, 32px)", f"{supernet_s * 1e3:.1f} ms", ""),
        ("static step (same subnet)", f"{static_s * 1e3:.1f} ms", ""),
        ("slicing_overhead_ratio", f"{ratio:.3f}", "<= 1.10"),
    ], results, args.json)


if __name__ == "__main__":
    main()
