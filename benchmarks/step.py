"""Training-iteration cost of the PSS step against the uniform baseline and a reference-style step.

    python benchmarks/step.py --json bench-step.json

Keys: pss_over_uniform (seconds per iteration of pss / uniform; target <= 1.03),
pss_over_reference_style (pss / a step that scores the sampled subnet with an extra no-grad
forward, as the reference implementation does; target <= 0.90), plus the seconds behind them.
All three run side by side (interleaved) on the same model, batch and device.
"""

from __future__ import annotations

import torch

from _common import interleaved_medians, parse_args, report

from pssnet import create_supernet
from pssnet.constraints import Constraint
from pssnet.resources import ResourceMeter
from pssnet.sampling import PSSSampler, UniformSampler, build_space_map
from pssnet.training.step import SandwichStep
from pssnet.training.trainer import weight_decay_groups


def _options(parser) -> None:
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _options)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    net = create_supernet(args.arch, num_classes=10, in_chans=1, small_input=True).to(device).train()
    optimizer = torch.optim.SGD(weight_decay_groups(net, 1e-4), lr=0.01, momentum=0.9, nesterov=True)
    meter = ResourceMeter(net)
    constraint = Constraint.parse("flops:11:24:1" if args.arch == "mobilenet_v2" else "flops:16:46:2")
    space_map = build_space_map(net.space, constraint, meter, samples=100_000, seed=0)
    images = torch.randn(args.batch_size, 1, 28, 28, device=device)
    labels = torch.randint(0, 10, (args.batch_size,), device=device)

    def iteration(sampler, step):
        def run() -> None:
            draw = sampler.sample(0.5)
            result = step(images, labels, draw.subnet)
            sampler.update(draw, result.score)
        return run

    def pss_sampler():
        return PSSSampler([constraint], {"flops": space_map}, meter, seed=0, pool_size=4)

    fns = {
        "pss": iteration(pss_sampler(), SandwichStep(net, net, optimizer)),
        "uniform": iteration(UniformSampler(net.space, seed=0), SandwichStep(net, net, optimizer)),
        "reference_style": iteration(pss_sampler(), SandwichStep(net, net, optimizer, extra_forward_score=True)),
    }
    if device.type == "cuda":  # time whole iterations, not kernel launches
        fns = {name: (lambda fn=fn: (fn(), torch.cuda.synchronize())) for name, fn in fns.items()}
    seconds = interleaved_medians(fns, repeats=args.repeats, warmup=3)
    results = {
        "pss_over_uniform": seconds["pss"] / seconds["uniform"],
        "pss_over_reference_style": seconds["pss"] / seconds["reference_style"],
        **{f"seconds_per_iter_{name}": s for name, s in seconds.items()},
        "batch_size": args.batch_size, "arch": args.arch, "device": str(device),
    }
    rows = [("pss_over_uniform", f"{results['pss_over_uniform']:.3f}", "<= 1.03"),
            ("pss_over_reference_style", f"{results['pss_over_reference_style']:.3f}", "<= 0.90"),
            *[(f"seconds_per_iter_{n}", f"{s:.4f}", "") for n, s in seconds.items()]]
    report(f"training step: {args.arch} small-input, batch {args.batch_size}, {device}", rows, results, args.json)


if __name__ == "__main__":
    main()
