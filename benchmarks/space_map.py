"""Time to build the constraint-conditioned space map from 1,000,000 random subnets.

    python benchmarks/space_map.py --json bench-space-map.json

Key: seconds_1m_map (MobileNetV1, ImageNet space, FLOPs 110:570:10, no cache; target < 10 s),
plus conditional draws per second and the number of targets reached.
"""

from __future__ import annotations

import time

import numpy as np

from _common import median_seconds, parse_args, report

from pssnet import create_supernet
from pssnet.constraints import Constraint
from pssnet.resources import ResourceMeter
from pssnet.sampling import build_space_map


def _options(parser) -> None:
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _options)
    net = create_supernet("mobilenet_v1")
    constraint = Constraint.parse("flops:110:570:10")
    meter = ResourceMeter(net.layout)
    seconds = median_seconds(lambda: build_space_map(net.space, constraint, meter, args.samples, seed=0),
                             repeats=args.repeats, warmup=0)
    space_map = build_space_map(net.space, constraint, meter, args.samples, seed=0)
    rng = np.random.default_rng(0)
    draws = 500
    t0 = time.perf_counter()
    for i in range(draws):
        space_map.draw(i % len(constraint.targets), meter, rng)
    draws_per_s = draws / (time.perf_counter() - t0)
    results = {"seconds_1m_map": seconds, "samples": args.samples, "draws_per_second": draws_per_s,
               "targets_reached": len(space_map.reachable_targets), "targets": len(constraint.targets)}
    rows = [("seconds_1m_map", f"{seconds:.2f}", "< 10"),
            ("draws_per_second", f"{draws_per_s:.0f}", ""),
            ("targets_reached", f"{len(space_map.reachable_targets)}/{len(constraint.targets)}", "all")]
    report(f"space map: mobilenet_v1 {constraint.text}, {args.samples:,} subnets", rows, results, args.json)


if __name__ == "__main__":
    main()
