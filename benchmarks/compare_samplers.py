"""PSS vs. the uniform sampler: same data, model, iterations, recipe and seeds; both evaluated
the same way (held-out selection among the same number of candidates per budget).

    python benchmarks/compare_samplers.py --json bench-compare.json
    # on one large GPU, about 10 minutes (an estimate; see the README's Benchmarks section):
    python benchmarks/compare_samplers.py --device cuda --data fashion-mnist:DIR --iters 1500 --batch-size 256
        --lr 0.1 --warmup-iters 230 --runs runs/compare-gpu --results-md docs/results-gpu.md

Writes docs/results.md and docs/compare_samplers.png (paths configurable) and one flat JSON
object: per budget and sampler the mean test accuracy over seeds, the mean PSS - uniform
difference, and its spread. Runs are kept in --runs and reused when already finished.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import pathlib
import shlex
import statistics
import sys
import time

import torch
from _common import parse_args, report
from torch.utils.data import Subset

from pssnet.cli.args import non_negative_int, positive_float, positive_int
from pssnet.cli.args import seed as seed_number
from pssnet.data import load_data
from pssnet.devices import resolve_device
from pssnet.errors import UserError
from pssnet.evaluation import EvalConfig, EvalResult, evaluate_run, load_eval
from pssnet.training import PRESETS, TrainConfig, Trainer, apply_preset, load_run
from pssnet.training.config import update_config

SAMPLERS = ("pss", "uniform")
PRESET = "compare-fmnist"  # the training set-up; the options below default to its values
_SETUP = PRESETS[PRESET]


def _options(p) -> None:
    resolutions = ":".join(map(str, _SETUP["resolutions"]))
    p.add_argument("--data", default=_SETUP["data"],
                   help="data spec as for pssnet train, e.g. fashion-mnist[:DIR], cifar10:DIR "
                        "(default: full Fashion-MNIST, Debian package)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="training and evaluation device (default auto: CUDA when available)")
    p.add_argument("--arch", default=_SETUP["arch"])
    p.add_argument("--constraint", default=_SETUP["constraints"][0], help="budget grid shared by both samplers")
    p.add_argument("--seeds", type=seed_number, nargs="+", default=[0, 1, 2])
    p.add_argument("--iters", type=positive_int, default=_SETUP["max_iters"],
                   help=f"training iterations per run (default {_SETUP['max_iters']})")
    p.add_argument("--batch-size", type=positive_int, default=_SETUP["batch_size"])
    p.add_argument("--lr", type=positive_float, default=_SETUP["recipe"]["lr"])
    p.add_argument("--warmup-iters", type=non_negative_int, default=15)
    p.add_argument("--resolutions", default=resolutions, help=f"MIN:MAX:STEP of the supernet (default {resolutions})")
    p.add_argument("--top-k", type=positive_int, default=3, help="candidates evaluated per budget (both samplers)")
    p.add_argument("--holdout", type=positive_int, default=_SETUP["holdout"],
                   help="training images kept out of training and used for selection")
    p.add_argument("--calib-batches", type=positive_int, default=4)
    p.add_argument("--test-limit", type=positive_int, default=None,
                   help="evaluate on the first N test images (default all)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--jobs", type=positive_int, default=1,
                   help="train and evaluate up to N runs at once, each in its own process (one large GPU holds "
                        "several of these small runs; on a CPU give each job its own cores with --threads)")
    p.add_argument("--runs", type=pathlib.Path, default=pathlib.Path("runs/compare"))
    p.add_argument("--results-md", type=pathlib.Path, default=pathlib.Path("docs/results.md"))
    p.add_argument("--plot", type=pathlib.Path, default=pathlib.Path("docs/compare_samplers.png"))


def train(args, sampler: str, seed: int, num_train: int) -> pathlib.Path:
    out = args.runs / f"{sampler}-seed{seed}"
    if (out / "final.pt").is_file():
        print(f"reusing {out}")
        return out
    config = TrainConfig(out=str(out))
    apply_preset(config, PRESET)
    # This script's options (defaults: the preset's), then the sampler and seed compared.
    update_config(config, {
        "arch": args.arch, "data": args.data, "constraints": [args.constraint], "batch_size": args.batch_size,
        # The preset's one epoch would cap --iters: let the epochs cover the iterations asked for.
        "epochs": math.ceil(args.iters * args.batch_size / num_train),
        "max_iters": args.iters, "resolutions": [int(x) for x in args.resolutions.split(":")],
        "holdout": args.holdout,  # kept out of training; evaluation selects on exactly these images
        "recipe": {"lr": args.lr, "warmup_epochs": args.warmup_iters * args.batch_size / num_train},
        "sampler": {"name": sampler}, "seed": seed, "threads": args.threads, "device": args.device,
        "progress": args.jobs == 1})
    t0 = time.perf_counter()
    Trainer(config).run()
    _record_seconds(out, "train", time.perf_counter() - t0)
    return out


def _record_seconds(run_dir: pathlib.Path, what: str, seconds: float) -> None:
    """Keep each step's wall time next to the run, so a re-run that reuses it can report it."""
    path = run_dir / "bench_seconds.json"
    times = json.loads(path.read_text()) if path.is_file() else {}
    times[what] = round(seconds, 1)
    path.write_text(json.dumps(times) + "\n")
    print(f"{what} {run_dir}: {seconds:.0f} s")


def _seconds(run_dir: pathlib.Path) -> dict[str, float]:
    path = run_dir / "bench_seconds.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def evaluate(args, run_dir: pathlib.Path, data, config: EvalConfig) -> EvalResult:
    saved = run_dir / "eval.json"
    if saved.is_file():
        return load_eval(saved)
    t0 = time.perf_counter()
    result, _ = evaluate_run(load_run(run_dir), data, config, name=run_dir.name)
    saved.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    _record_seconds(run_dir, "eval", time.perf_counter() - t0)
    return result


def kept_by_target(result: EvalResult) -> dict[float, tuple[float, float]]:
    """target -> (MFLOPs, test accuracy) of the subnet kept for it."""
    return {b.target: (b.best.resources["flops"], b.best.test_acc) for b in result.budgets if b.best}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def plot(results: dict[str, list[EvalResult]], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (sampler, runs), color in zip(results.items(), ("tab:red", "tab:blue")):
        for i, r in enumerate(runs):
            pts = sorted(kept_by_target(r).values())
            ax.plot(*zip(*pts), marker="o", color=color, alpha=0.85 if i == 0 else 0.45, lw=1.5,
                    label=f"{sampler} (seed {r.settings.get('run_seed')})")
            ext = [(c.resources["flops"], c.test_acc) for c in r.extremes.values()]
            ax.scatter(*zip(*ext), marker="*", s=90, color=color, edgecolor="black", zorder=3)
    ax.set_xlabel("MFLOPs of the subnet kept per budget")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("PSS vs. uniform sampling (stars: smallest / largest subnet)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _where(args) -> str:
    """Where the runs ran, for the results page."""
    device = resolve_device(args.device)
    if device.type == "cuda":
        return f"on one {torch.cuda.get_device_name(device)} GPU"
    return f"on the CPU, {args.threads} thread(s)"


def markdown(args, results: dict[str, list[EvalResult]], rows: list[dict], summary: dict, seconds: dict,
             num_train: int) -> str:
    command = "python benchmarks/compare_samplers.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    s = results["pss"][0].settings
    epochs = args.iters * args.batch_size / num_train
    lines = [
        "# Results: PSS vs. uniform sampling",
        "",
        f"Command ({seconds['train'] / 60:.0f} min of training and {seconds['eval'] / 60:.0f} min of evaluation "
        f"for all runs, {_where(args)}):",
        "",
        "```bash",
        command.strip(),
        "```",
        "",
        f"Both samplers train `{args.arch}` (small input, resolutions {args.resolutions}) on `{args.data}` "
        "with the same recipe (sandwich rule, "
        f"in-place distillation, SGD lr {args.lr}, {args.warmup_iters} warm-up iterations, cosine), "
        f"{args.iters} iterations of batch {args.batch_size}, "
        f"seeds {', '.join(map(str, args.seeds))}, budgets `{args.constraint}`. Evaluation is identical for both: "
        f"per budget {args.top_k} candidates (PSS: the top of its pool; uniform: random subnets inside the "
        f"budget's bucket), BN recalibrated on {s['calib_batches']} batches of {s['batch_size']}, the kept subnet "
        f"chosen on {s['holdout']} held-out training images, its accuracy measured on {s['test']} test images.",
        "",
        "| budget (MFLOPs) | PSS test acc | uniform test acc | PSS - uniform (mean ± sd over seeds) |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['target']:g} | {r['pss_mean']:.2f} ± {r['pss_sd']:.2f} | "
                     f"{r['uniform_mean']:.2f} ± {r['uniform_sd']:.2f} | {r['diff_mean']:+.2f} ± {r['diff_sd']:.2f} |")
    for role in ("smallest", "largest"):
        p = _mean_sd([r.extremes[role].test_acc for r in results["pss"]])
        u = _mean_sd([r.extremes[role].test_acc for r in results["uniform"]])
        lines.append(f"| {role} subnet | {p[0]:.2f} ± {p[1]:.2f} | {u[0]:.2f} ± {u[1]:.2f} | {p[0] - u[0]:+.2f} |")
    lines += [
        "",
        f"![PSS vs uniform]({args.plot.name})",
        "",
        f"Summary: over {len(rows)} budgets, PSS minus uniform = {summary['mean_diff']:+.2f} points on average "
        f"(PSS ahead in {summary['pss_wins']} of {summary['comparisons']} budget x seed pairs); the seed-to-seed "
        f"spread of a single sampler is about {summary['typical_sd']:.2f} points.",
        "",
        f"Caveats: these are short runs (about {epochs:.2g} passes over the {num_train:,} training images; the "
        "paper trains 250 epochs on ImageNet), so neither sampler has converged and this shows the "
        "early-training regime. "
        "The held-out images come from the training split and were kept out of training; the test images are used "
        "only to report the kept subnets. "
        "Differences smaller than the seed spread are not evidence either way.",
        "",
    ]
    return "\n".join(lines)


def _load_data(args):
    data = load_data(args.data)
    if args.test_limit:
        data.test = Subset(data.test, range(min(args.test_limit, len(data.test))))
    return data


def _eval_config(args) -> EvalConfig:
    return EvalConfig(top_k=args.top_k, calib_batches=args.calib_batches, holdout=args.holdout,
                      batch_size=args.batch_size, seed=0, device=args.device)


def _run_job(args, sampler: str, seed: int) -> str:
    """One run, trained and evaluated in a worker process (``--jobs``); its files are what the parent reuses."""
    torch.set_num_threads(args.threads)
    data = _load_data(args)
    evaluate(args, train(args, sampler, seed, len(data.train)), data, _eval_config(args))
    return f"{sampler}-seed{seed}"


def _run_jobs(args) -> None:
    """Train and evaluate every (sampler, seed) run in up to ``args.jobs`` processes at once."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
        futures = [pool.submit(_run_job, args, sampler, seed) for seed in args.seeds for sampler in SAMPLERS]
        for future in as_completed(futures):
            print(f"finished {future.result()}", flush=True)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], _options)
    torch.set_num_threads(args.threads)
    try:
        resolve_device(args.device)  # fail now, not after loading the data, when the device is missing
    except UserError as error:
        sys.exit(f"compare_samplers.py: {error}")
    if args.jobs > 1:
        _run_jobs(args)
    data = _load_data(args)
    config = _eval_config(args)
    results: dict[str, list[EvalResult]] = {s: [] for s in SAMPLERS}
    for seed in args.seeds:
        for sampler in SAMPLERS:
            results[sampler].append(evaluate(args, train(args, sampler, seed, len(data.train)), data, config))

    targets = sorted(set.intersection(*[set(kept_by_target(r)) for rs in results.values() for r in rs]))
    rows, diffs, flat = [], [], {}
    for t in targets:
        pss = [kept_by_target(r)[t][1] for r in results["pss"]]
        uni = [kept_by_target(r)[t][1] for r in results["uniform"]]
        d = [a - b for a, b in zip(pss, uni)]
        diffs += d
        row = {"target": t, **dict(zip(("pss_mean", "pss_sd"), _mean_sd(pss))),
               **dict(zip(("uniform_mean", "uniform_sd"), _mean_sd(uni))),
               **dict(zip(("diff_mean", "diff_sd"), _mean_sd(d)))}
        rows.append(row)
        flat.update({f"pss_acc_{t:g}": round(row["pss_mean"], 3), f"uniform_acc_{t:g}": round(row["uniform_mean"], 3)})
    summary = {"mean_diff": statistics.fmean(diffs), "pss_wins": sum(d > 0 for d in diffs), "comparisons": len(diffs),
               "typical_sd": statistics.fmean([r["pss_sd"] for r in rows] + [r["uniform_sd"] for r in rows])}
    runs = [args.runs / f"{sampler}-seed{seed}" for seed in args.seeds for sampler in SAMPLERS]
    seconds = {k: sum(_seconds(r).get(k, 0.0) for r in runs) for k in ("train", "eval")}
    minutes = (seconds["train"] + seconds["eval"]) / 60
    plot(results, args.plot)
    args.results_md.parent.mkdir(parents=True, exist_ok=True)
    args.results_md.write_text(markdown(args, results, rows, summary, seconds, len(data.train)))

    out = {"mean_pss_minus_uniform": round(summary["mean_diff"], 3), "pss_wins": summary["pss_wins"],
           "comparisons": summary["comparisons"], "seed_sd": round(summary["typical_sd"], 3), "seeds": len(args.seeds),
           "device": resolve_device(args.device).type,
           "iters": args.iters, "budgets": len(targets), "minutes": round(minutes, 1), **flat}
    report("PSS vs. uniform (mean test accuracy over seeds)",
           [(f"budget {r['target']:g}", f"{r['pss_mean']:.2f} / {r['uniform_mean']:.2f}", f"diff {r['diff_mean']:+.2f}")
            for r in rows] + [("mean PSS - uniform", f"{summary['mean_diff']:+.2f}", "")], out, args.json)
    print(f"wrote {args.results_md} and {args.plot}")


if __name__ == "__main__":
    main()
