"""The ``README.md`` model card of a Hub folder: YAML metadata the Hub indexes (library, tags,
data sets), the Pareto table of the kept subnets, the plot, how the run was trained, and how to
use the model."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from ..resources import KINDS, UNITS

# The Hub's ids of the data sets pssnet reads (a `folder:` data set has none).
HUB_DATASETS = {"fashion-mnist": "fashion_mnist", "fashion-mnist-mini": "fashion_mnist", "mnist": "mnist",
                "cifar10": "cifar10", "cifar100": "cifar100"}
_HEADINGS = {"flops": "MFLOPs", "params": "M params", "latency_cpu": "CPU ms", "latency_gpu": "GPU ms"}


def model_card(config: Mapping[str, Any], plot: bool = False) -> str:
    """The model card of a folder's ``config.json`` (``plot``: the folder holds ``pareto.png``)."""
    arch = config["model_config"]["arch"]
    data = config.get("data") or (config.get("training") or {}).get("data")
    parts = [_front_matter(arch, data), f"# {arch} supernet trained with PSS-Net" + (f" on `{data}`" if data else ""),
             _introduction(config), "## Kept subnets (Pareto table)", pareto_table(config["subnets"]),
             _table_note(config)]
    if plot:
        parts.append("![Accuracy against resources; the kept subnet of each budget highlighted](pareto.png)")
    parts += ["## Training", _training(config), "## Usage", _usage(config), "## Files", _files()]
    return "\n\n".join(parts) + "\n"


def _front_matter(arch: str, data: Optional[str]) -> str:
    lines = ["---", "library_name: pssnet", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {tag}" for tag in ("pssnet", "image-classification", "supernet", "resource-adaptive",
                                     "neural-architecture-search", arch.replace("_", "-"))]
    dataset = HUB_DATASETS.get((data or "").split(":")[0])
    if dataset:
        lines += ["datasets:", f"- {dataset}"]
    lines += ["metrics:", "- accuracy", "---"]
    return "\n".join(lines)


def _introduction(config: Mapping[str, Any]) -> str:
    count = len(config["subnets"])
    return (f"A resource-adaptive supernet trained with Prioritized Subnet Sampling (PSS-Net, Chen et al., "
            f"TPAMI 2023) by [pssnet](https://pypi.org/project/pssnet/). It keeps {count} subnets, the most "
            "accurate one per budget plus the largest and the smallest, each with its own recalibrated "
            "BatchNorm statistics: `AdaptiveNet.fit_budget` switches between them in microseconds, "
            "without recalibration.")


def pareto_table(subnets: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the kept subnets, smallest first: what each was kept for, its
    resources and its held-out and test accuracy."""
    kinds = [k for k in KINDS if subnets and all(k in e["resources"] for e in subnets)]
    rows = ["| kept for | subnet | " + " | ".join(_HEADINGS[k] for k in kinds) + " | held-out acc | test acc |",
            "|---|---|" + "---|" * len(kinds) + "---|---|"]
    for entry in sorted(subnets, key=lambda e: [e["resources"].get(k, 0.0) for k in kinds]):
        values = " | ".join(f"{entry['resources'][k]:.4g}" for k in kinds)
        rows.append(f"| {', '.join(entry['labels'])} | `{_key(entry['subnet'])}` | {values} | "
                    f"{_percent(entry.get('holdout_acc'))} | {_percent(entry.get('test_acc'))} |")
    return "\n".join(rows)


def _key(subnet: Mapping[str, Any]) -> str:
    from ..space import Subnet

    return Subnet.from_dict(dict(subnet)).key


def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _table_note(config: Mapping[str, Any]) -> str:
    units = ", ".join(f"{k} in {UNITS[k]}" for k in KINDS if any(k in e["resources"] for e in config["subnets"]))
    split = "the test set itself" if config.get("select_on") == "test" else "held-out training images"
    note = (f"Accuracies in percent ({units}). Each budget's subnet was chosen on {split}; "
            "the test accuracy was measured after that choice.")
    for kind, table in sorted((config.get("luts") or {}).items()):
        note += f" {kind} is predicted by a latency table measured on {_device(table.get('device') or {})}."
    return note


def _device(device: Mapping[str, Any]) -> str:
    what = device.get("cuda") or device.get("cpu") or device.get("type", "an unnamed device")
    extra = []
    if device.get("threads"):
        extra.append(f"{device['threads']} threads")
    if device.get("torch"):
        extra.append(f"torch {device['torch']}")
    return f"{what} ({', '.join(extra)})" if extra else str(what)


def _training(config: Mapping[str, Any]) -> str:
    training = config.get("training") or {}
    constraints = ", ".join(f"{c['kind']}:{float(c['start']):g}:{float(c['stop']):g}:{float(c['step']):g}"
                            for c in config.get("constraints") or [] if isinstance(c, Mapping) and "kind" in c)
    lines = [f"- data set: `{config.get('data') or training.get('data') or 'not recorded'}`",
             f"- sampler: {config.get('sampler') or 'not recorded'}; budgets: {constraints or 'not recorded'}"]
    if training.get("iterations") is not None:
        lines.append(f"- iterations: {training['iterations']}")
    prep = config.get("preprocessing")
    if prep:
        lines.append(f"- input: {prep['in_chans']} x {prep['image_size']} x {prep['image_size']} px, scaled to "
                     f"[0, 1], mean {prep['mean']}, std {prep['std']}; classes: {', '.join(prep['class_names'][:10])}"
                     + (", ..." if len(prep["class_names"]) > 10 else ""))
    command = training.get("command")
    text = "\n".join(lines)
    if command:
        text += f"\n\nTrained with:\n\n```bash\n{command}\n```"
    return text + "\n\nand evaluated with `pssnet eval` (BN recalibration, selection, test accuracy)."


def _usage(config: Mapping[str, Any]) -> str:
    mc = config["model_config"]
    size = config.get("image_size") or mc["resolutions"][1]
    flops = sorted(e["resources"].get("flops", 0.0) for e in config["subnets"])
    budget = f"{flops[len(flops) // 2]:.4g}" if flops and flops[-1] else None
    fit = f"net.fit_budget(flops={budget})" if budget else "net.switch_to(net.subnets[0])"
    return (f"```bash\npip install 'pssnet[hub]'\n```\n\n```python\nimport torch\nfrom pssnet import AdaptiveNet\n\n"
            f'net = AdaptiveNet.from_pretrained("THIS_REPO_ID_OR_FOLDER")\nchosen = {fit}  # the most accurate '
            f"kept subnet within the budget\nprint(chosen.describe())\nlogits = net(torch.randn(1, {mc['in_chans']}, "
            f"{size}, {size}))\n```\n\nFrom the command line (a downloaded folder or `adaptive.pt`):\n\n```bash\n"
            f"pssnet serve FOLDER --slo-ms 50          # HTTP, switching subnets to keep a latency target\n"
            f"pssnet export FOLDER --budget flops={budget or 'N'} -o model.onnx\n"
            f"pssnet export FOLDER --all -o subnets/   # every kept subnet, with an index\n```")


def _files() -> str:
    return ("- `config.json`: the model config, the kept subnets with their resources and accuracies, the "
            "preprocessing, the latency tables (with their device descriptions) and the format version;\n"
            "- `model.safetensors`: the supernet weights (`supernet.<name>`) and each kept subnet's BatchNorm "
            "statistics (`subnets.<i>.<layer>.running_mean` / `.running_var`, `i` its place in `config.json`);\n"
            "- `README.md`: this card. Nothing is pickled.")
