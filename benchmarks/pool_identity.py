"""Distinct architectures per PSS pool, with pools keyed by raw multipliers or by canonical subnets.

    python benchmarks/pool_identity.py --json bench-pool-identity.json [--raw-src /path/to/old/src]

MobileNetV2 (ImageNet space), FLOPs 80:290:10, pool size 50, ``--draws`` sampler steps with
p and T annealed over the run. No training: each step's score is a seeded synthetic ``-CE``
proxy, a fixed random function of the network (resolution and channels) plus per-draw noise,
so copies of one network score alike, as they would in training. Both sides use one map, one
seed and one score. ``raw`` keys pools by multipliers as before canonical subnets (map draws
and pool keys left raw); ``canonical`` is the library's behaviour. ``--raw-src`` also runs the
sampler of another source tree (e.g. the code before canonical subnets) as ``raw_src``.
Keys: ``distinct_per_pool_{raw,canonical}_{min,median,max}``, ``entries_per_pool_*_median``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile

from _common import parse_args, report

CONSTRAINT = "flops:80:290:10"


def _options(parser) -> None:
    parser.add_argument("--draws", type=int, default=20_000)
    parser.add_argument("--pool-size", type=int, default=50)
    parser.add_argument("--map-samples", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--raw-src", help="also run the sampler of this source tree (its own keys)")
    parser.add_argument("--side", choices=("raw", "canonical", "src"),
                        help="internal: run one side only and write its pools as JSON")


def _network_score(resolution: int, channels: tuple[int, ...], seed: int) -> float:
    """A fixed pseudo-random ``-CE`` of one network: same network, same expected score."""
    digest = hashlib.sha256(f"{seed}:{resolution}:{channels}".encode()).digest()
    return -2.0 - int.from_bytes(digest[:8], "little") / 2**64


def _raw_classes():
    """A sampler and map that keep raw multipliers (the behaviour before canonical subnets)."""
    from pssnet.sampling import PSSSampler, SpaceMap
    from pssnet.space import Subnet

    class RawSpaceMap(SpaceMap):
        def _canonical(self, meter, resolution, widths):
            return Subnet(resolution, tuple(widths.tolist()))

    class RawKeyedSampler(PSSSampler):
        def canonical(self, kind, subnet):
            return subnet

    return RawSpaceMap, RawKeyedSampler


def simulate(side: str, draws: int, pool_size: int, map_samples: int, seed: int) -> list[dict]:
    """Per pool: target, entries, distinct architectures (resolution and channels) after ``draws`` steps."""
    import numpy as np

    from pssnet import create_supernet
    from pssnet.constraints import Constraint
    from pssnet.resources import ResourceMeter
    from pssnet.sampling import PSSSampler, build_space_map

    net = create_supernet("mobilenet_v2")
    meter = ResourceMeter(net.layout)
    c = Constraint.parse(CONSTRAINT)
    space_map, sampler_class = build_space_map(net.space, c, meter, map_samples, seed), PSSSampler
    if side == "raw":
        map_class, sampler_class = _raw_classes()
        space_map = map_class(**{f.name: getattr(space_map, f.name) for f in dataclasses.fields(space_map)})
    sampler = sampler_class([c], {c.kind: space_map}, meter, seed=seed, pool_size=pool_size)
    noise = np.random.default_rng(seed + 1).normal(0.0, 0.05, draws)
    for i in range(draws):
        draw = sampler.sample(i / draws)
        channels = net.layout.group_channels(draw.subnet.widths)
        sampler.update(draw, _network_score(draw.subnet.resolution, channels, seed) + noise[i])
    pools = []
    for target, entries in sampler.pools_state()[c.kind].items():
        subnets = [e["subnet"] for e in entries]
        distinct = {(s["resolution"], net.layout.group_channels(s["widths"])) for s in subnets}
        pools.append({"target": float(target), "entries": len(subnets), "distinct": len(distinct)})
    return pools


def _run_src(src: str, args) -> list[dict]:
    """``simulate`` with another source tree's pssnet, in a subprocess (its own keys)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "pools.json")
        cmd = [sys.executable, __file__, "--side", "src", "--json", out, "--draws", str(args.draws),
               "--pool-size", str(args.pool_size), "--map-samples", str(args.map_samples), "--seed", str(args.seed)]
        subprocess.run(cmd, check=True, env={**os.environ, "PSSNET_BENCH_SRC": src})
        with open(out) as f:
            return json.load(f)


def _summary(name: str, pools: list[dict]) -> dict:
    distinct, entries = [p["distinct"] for p in pools], [p["entries"] for p in pools]
    return {f"distinct_per_pool_{name}_min": min(distinct), f"distinct_per_pool_{name}_median": statistics.median(distinct),
            f"distinct_per_pool_{name}_max": max(distinct), f"entries_per_pool_{name}_median": statistics.median(entries),
            f"pools_{name}": pools}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _options)
    if os.environ.get("PSSNET_BENCH_SRC"):
        sys.path.insert(0, os.environ["PSSNET_BENCH_SRC"])  # before _common's src: the other tree wins
    if args.side:
        pools = simulate("canonical" if args.side == "src" else args.side, args.draws, args.pool_size,
                         args.map_samples, args.seed)
        args.json.write_text(json.dumps(pools))
        return
    sides = {"raw": simulate("raw", args.draws, args.pool_size, args.map_samples, args.seed),
             "canonical": simulate("canonical", args.draws, args.pool_size, args.map_samples, args.seed)}
    if args.raw_src:
        sides["raw_src"] = _run_src(args.raw_src, args)
    results = {"draws": args.draws, "pool_size": args.pool_size, "constraint": CONSTRAINT, "seed": args.seed}
    for name, pools in sides.items():
        results.update(_summary(name, pools))
    print(f"{'target':>7}  " + "  ".join(f"{n + ' entries/distinct':>26}" for n in sides))
    for row in zip(*sides.values()):
        print(f"{row[0]['target']:>7g}  " + "  ".join(f"{p['entries']:>17}/{p['distinct']:<8}" for p in row))
    rows = [(f"distinct_per_pool_{n}_{s}", f"{results[f'distinct_per_pool_{n}_{s}']:g}", "= entries")
            for n in sides for s in ("min", "median", "max")]
    report(f"pool identity: mobilenet_v2 {CONSTRAINT}, {args.draws:,} draws, pool size {args.pool_size}",
           rows, results, args.json)


if __name__ == "__main__":
    main()
