"""Training-iteration cost of what PSS adds: its bookkeeping over uniform, and the forward it saves.

    python benchmarks/step.py --json bench-step.json
    python benchmarks/step.py --device cuda --amp --json bench-step-cuda.json

All variants train the same subnets: one seeded sequence is drawn once from the PSS sampler,
and each repeat runs every variant on the same subnet and the same batch, interleaved (in an
order that rotates from repeat to repeat, after one untimed run of the subnet in each precision),
in one process with the same threads. An iteration is the library's ``SandwichStep`` (largest + sampled
+ smallest) plus its sampler's cost, which is timed on its own over a whole training schedule
(progress 0 to 1, pools filling) and added on top:

- ``uniform``: the sandwich step + ``UniformSampler``'s draw;
- ``pss``: the same sandwich step (the sampled subnet's training logits give its score)
  + ``PSSSampler``'s draw and pool update;
- ``reference_style``: the sandwich step with an extra no-grad forward for the score, as the
  reference implementation does + the same PSS draw and update.

``pss`` and ``uniform`` run the same step code, so they share its timing, and ``pss_over_uniform``
is the bookkeeping overhead alone (target <= 1.03); ``pss_over_reference_style`` is the saved
forward alone (target <= 0.90). Ratios are medians of per-subnet ratios. With ``--device cuda``
(or ``--amp``) the plain step also runs in the other precision, interleaved on the same subnets,
giving ``amp_over_fp32`` (seconds per step with AMP / fp32; below 1 means AMP is faster).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from _common import interleaved_times, parse_args, report

from pssnet import create_supernet
from pssnet.constraints import Constraint
from pssnet.resources import ResourceMeter
from pssnet.sampling import PSSSampler, SpaceMap, SubnetSampler, UniformSampler, build_space_map
from pssnet.space import Subnet
from pssnet.supernet import Supernet
from pssnet.training.config import SamplerConfig
from pssnet.training.step import SandwichStep
from pssnet.training.recipe import weight_decay_groups

WARMUP = 3
IMAGE_SIZE, IN_CHANS, CLASSES = 28, 1, 10


def _options(parser) -> None:
    parser.add_argument("--arch", default="mobilenet_v2", choices=("mobilenet_v1", "mobilenet_v2"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15, help="subnets timed (each runs every variant once)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="mixed precision for the pss/uniform/reference steps")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--sampler-draws", type=int, default=2000,
                        help="draws over which each sampler's cost is timed (one whole schedule)")
    parser.add_argument("--map-samples", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)


@dataclass
class Bench:
    """The supernet, the PSS set-up and the fixed inputs that every variant shares."""

    net: Supernet
    meter: ResourceMeter
    constraint: Constraint
    space_map: SpaceMap
    batches: list[tuple[torch.Tensor, torch.Tensor]]

    def pss_sampler(self, seed: int) -> PSSSampler:
        s = SamplerConfig()
        return PSSSampler([self.constraint], {self.constraint.kind: self.space_map}, self.meter, seed=seed,
                          pool_size=s.pool_size, ema=s.ema, p0=s.p0, p1=s.p1, t0=s.t0, t1=s.t1)


def _setup(args) -> Bench:
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    net = create_supernet(args.arch, num_classes=CLASSES, in_chans=IN_CHANS, small_input=True).to(device).train()
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    meter = ResourceMeter(net.layout)
    constraint = Constraint.parse("flops:11:24:1" if args.arch == "mobilenet_v2" else "flops:16:46:2")
    space_map = build_space_map(net.space, constraint, meter, samples=args.map_samples, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    batches = [(torch.randn(args.batch_size, IN_CHANS, IMAGE_SIZE, IMAGE_SIZE, generator=generator).to(device),
                torch.randint(0, CLASSES, (args.batch_size,), generator=generator).to(device))
               for _ in range(WARMUP + args.repeats)]
    return Bench(net, meter, constraint, space_map, batches)


def run_schedule(sampler: SubnetSampler, draws: int, seed: int) -> tuple[float, list[Subnet]]:
    """Seconds per draw+update of ``sampler`` over progress 0..1, and the subnets it drew.

    Scores are seeded stand-ins for ``-CE``: the pool's cost does not depend on their values.
    """
    scores = -np.random.default_rng(seed).uniform(0.5, 3.0, draws)
    subnets = []
    t0 = time.perf_counter()
    for i in range(draws):
        draw = sampler.sample(i / draws)
        sampler.update(draw, float(scores[i]))
        subnets.append(draw.subnet)
    return (time.perf_counter() - t0) / draws, subnets


def sampler_costs(bench: Bench, draws: int, seed: int, passes: int = 3) -> tuple[dict[str, float], list[Subnet]]:
    """Median seconds per iteration of each sampler's own work, and the PSS draw sequence."""
    times: dict[str, list[float]] = {"pss": [], "uniform": []}
    sequence: list[Subnet] = []
    for _ in range(passes):  # alternate, so that machine noise hits both alike
        seconds, sequence = run_schedule(bench.pss_sampler(seed), draws, seed)
        times["pss"].append(seconds)
        times["uniform"].append(run_schedule(UniformSampler(bench.net.space, seed), draws, seed)[0])
    return {name: statistics.median(ts) for name, ts in times.items()}, sequence


def spread(sequence: list[Subnet], count: int) -> list[Subnet]:
    """``count`` subnets evenly spaced over the schedule, so that all of training is represented."""
    return [sequence[i] for i in np.linspace(0, len(sequence) - 1, count).round().astype(int)]


def make_steps(bench: Bench, args) -> dict[str, SandwichStep]:
    """The timed step variants: ``{precision}`` and ``{precision}_extra_forward``, plus the other precision."""
    optimizer = torch.optim.SGD(weight_decay_groups(bench.net, 1e-4), lr=0.01, momentum=0.9, nesterov=True)
    cuda = args.device == "cuda"

    def step(amp: bool, extra: bool) -> SandwichStep:
        scaler = torch.amp.GradScaler("cuda") if amp and cuda else None
        return SandwichStep(bench.net, bench.net, optimizer, amp=amp, channels_last=args.channels_last,
                            scaler=scaler, extra_forward_score=extra)

    main = "amp" if args.amp else "fp32"
    steps = {main: step(args.amp, False), f"{main}_extra_forward": step(args.amp, True)}
    if cuda or args.amp:
        steps["fp32" if args.amp else "amp"] = step(not args.amp, False)
    return steps


def time_steps(bench: Bench, steps: dict[str, SandwichStep], subnets: list[Subnet], cuda: bool) -> dict[str, list[float]]:
    """Seconds of each step variant per subnet (after warm-up), interleaved per subnet.

    Each subnet is first run once untimed in every precision: its new layer shapes pay their
    one-off costs (cuDNN plans on a GPU) there, not in whichever variant happens to run first.
    """
    def bind(step: SandwichStep) -> Callable[[int], object]:
        return lambda i: step(*bench.batches[i], subnets[i])

    primers = {s.amp: s for s in steps.values()}  # one step per precision

    def prime(i: int) -> None:
        for step in primers.values():
            step(*bench.batches[i], subnets[i])

    sync = torch.cuda.synchronize if cuda else None  # time whole iterations, not kernel launches
    return interleaved_times({name: bind(s) for name, s in steps.items()}, repeats=len(subnets) - WARMUP,
                             warmup=WARMUP, sync=sync, prime=prime)


def summarise(steps: dict[str, list[float]], samplers: dict[str, float], args) -> dict:
    main = "amp" if args.amp else "fp32"
    plain, extra = np.asarray(steps[main]), np.asarray(steps[f"{main}_extra_forward"])
    iters = {"pss": plain + samplers["pss"], "uniform": plain + samplers["uniform"],
             "reference_style": extra + samplers["pss"]}
    results = {
        "pss_over_uniform": float(np.median(iters["pss"] / iters["uniform"])),
        "pss_over_reference_style": float(np.median(iters["pss"] / iters["reference_style"])),
        **{f"seconds_per_iter_{n}": float(np.median(t)) for n, t in iters.items()},
        **{f"images_per_s_{n}": args.batch_size / float(np.median(t)) for n, t in iters.items()},
        **{f"sampler_seconds_per_iter_{n}": s for n, s in samplers.items()},
    }
    if "fp32" in steps and "amp" in steps:
        results["amp_over_fp32"] = float(np.median(np.asarray(steps["amp"]) / np.asarray(steps["fp32"])))
        for precision in ("fp32", "amp"):
            results[f"images_per_s_step_{precision}"] = args.batch_size / float(np.median(steps[precision]))
    results.update(batch_size=args.batch_size, arch=args.arch, device=args.device, amp=args.amp,
                   channels_last=args.channels_last, threads=torch.get_num_threads(), repeats=args.repeats)
    return results


def _rows(results: dict) -> list[tuple[str, str, str]]:
    targets = {"pss_over_uniform": "<= 1.03", "pss_over_reference_style": "<= 0.90", "amp_over_fp32": "< 1"}
    rows = []
    for key, value in results.items():
        if isinstance(value, float):
            digits = 1 if key.startswith("images_per_s") else (7 if "sampler" in key else (4 if "seconds" in key else 3))
            rows.append((key, f"{value:.{digits}f}", targets.get(key, "")))
    return rows


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _options)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("step.py: --device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = _setup(args)
    samplers, sequence = sampler_costs(bench, args.sampler_draws, args.seed)
    subnets = spread(sequence, WARMUP + args.repeats)
    steps = time_steps(bench, make_steps(bench, args), subnets, args.device == "cuda")
    results = summarise(steps, samplers, args)
    precision = "AMP" if args.amp else "fp32"
    title = (f"training step: {args.arch} small-input, batch {args.batch_size}, {args.device} {precision}, "
             f"{args.repeats} shared subnets")
    report(title, _rows(results), results, args.json)


if __name__ == "__main__":
    main()
