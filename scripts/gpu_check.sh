#!/usr/bin/env bash
# GPU check: run every CUDA path of pssnet once, in under 5 minutes on one GPU.
#
#   scripts/gpu_check.sh [--cpu-dry-run] [OUT_DIR]
#
# Steps: (1) train a few iterations with --device cuda --amp --channels-last, (2) the same under
# torchrun (one process, NCCL), (3) a small CUDA latency table, (4) eval on CUDA, (5) ONNX export,
# (6) benchmarks/step.py --device cuda (images/s, AMP vs fp32), (7) paper_data: a generated
# ImageNet-style folder of 500x375 JPEGs, (8) paper_scale: --preset mbv2-flops on it, --amp
# --channels-last, batch 256, 30 iterations (images/s, fraction of the time waiting for data),
# (9) paper_scale_gpu_decode: the same with --decode-on-device. Each step is timed and logged to
# OUT_DIR/logs/STEP.log; a summary table is printed and written to OUT_DIR/gpu_check.json.
# A failing step is reported and the script goes on; it exits 1 at the end if any step failed.
# Without a CUDA GPU it says so and exits 0. --cpu-dry-run runs the same command lines on the CPU
# with tiny sizes (a check of their syntax, not of CUDA; --decode-on-device must be refused).
#
# OUT_DIR: the argument, else $OUT, else ./gpu-check. Python: $PYTHON (an interpreter with pssnet
# installed), else the Makefile's venv (.venv, created by `make venv` as for `make test`).
# STEP_TIMEOUT (seconds, default 240): a step that runs longer is stopped and reported as failed.
# STEPS (names, space-separated; default all): run only these steps.
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
OUT_ARG=""
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "gpu_check.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
        *) OUT_ARG="$arg" ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT_ARG:-${OUT:-gpu-check}}"
mkdir -p "$OUT_DIR/logs"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"

if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
else
    make -C "$ROOT" venv
    PY="$ROOT/.venv/bin/python"
fi

if ! "$PY" -c 'import torch, pssnet' >/dev/null 2>&1; then
    echo "gpu_check.sh: $PY cannot import torch and pssnet; set PYTHON to an interpreter that can" >&2
    exit 2
fi
if [[ "$DRY_RUN" == 1 ]]; then
    DEVICE=cpu
else
    if [[ "$("$PY" -c 'import torch; print(torch.cuda.is_available())')" != "True" ]]; then
        echo "gpu_check.sh: torch sees no CUDA GPU; nothing to check (use --cpu-dry-run to test the command lines)"
        exit 0
    fi
    DEVICE=cuda
fi
DEVICE_NAME="$("$PY" -c 'import sys, torch; print(torch.cuda.get_device_name() if sys.argv[1] == "cuda" else "cpu")' "$DEVICE")"
echo "gpu_check.sh: $DEVICE_NAME, output in $OUT_DIR"

# Sizes: a short real check on the GPU, tiny ones for the CPU dry run.
RUN="$OUT_DIR/run"
if [[ "$DRY_RUN" == 1 ]]; then
    TRAIN_SIZE=(--max-iters 3 --batch-size 8 --map-samples 20000 --threads 1)
    LUT_SIZE=(--resolutions 28:28:4 --width-range 1.0:1.0 --rounds 1 --repeats 1 --warmup 1 --threads 1)
    EVAL_SIZE=(--top-k 1 --calib-batches 1 --batch-size 64)
    BENCH_SIZE=(--repeats 2 --batch-size 4 --sampler-draws 200 --map-samples 20000 --threads 1)
    PAPER_IMAGES=(--classes 2 --train-per-class 4 --val-per-class 2 --distinct 4)
    PAPER_SIZE=(--batch-size 4 --max-iters 2 --map-samples 20000 --threads 1)
else
    TRAIN_SIZE=(--max-iters 20 --batch-size 128 --map-samples 200000)
    LUT_SIZE=(--rounds 2 --repeats 3 --warmup 2)
    EVAL_SIZE=(--top-k 2 --calib-batches 4 --batch-size 512)
    BENCH_SIZE=(--repeats 20 --batch-size 256)
    # 30 iterations of 256 in one epoch (no held-out images); 256 distinct pictures, the rest copies.
    PAPER_IMAGES=(--classes 10 --train-per-class 768 --val-per-class 5 --distinct 256)
    PAPER_SIZE=(--batch-size 256 --max-iters 30 --map-samples 200000)
fi
PAPER_TRAIN=(--preset mbv2-flops --data "folder:$OUT_DIR/paper-data" --device "$DEVICE" --amp --channels-last
             --holdout 0 --log-every 5 --no-progress --map-cache "$OUT_DIR/map-cache" "${PAPER_SIZE[@]}")
COMMON_TRAIN=(--preset mini-mbv2 --device "$DEVICE" --amp --channels-last --log-every 5 --no-progress
              --map-cache "$OUT_DIR/map-cache" "${TRAIN_SIZE[@]}")

NAMES=() STATUSES=() SECONDS_TAKEN=() FIGURES=()
FAILED=0

# figure STEP: one key number of a finished step, read from what it wrote ("-" if none).
figure() {
    "$PY" - "$1" "$OUT_DIR" "$DRY_RUN" <<'EOF' 2>/dev/null || echo "-"
import json, pathlib, sys
step, out, dry_run = sys.argv[1], pathlib.Path(sys.argv[2]), sys.argv[3] == "1"
def last_speed(run):
    rows = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return f"{[r['images_per_s'] for r in rows if 'images_per_s' in r][-1]:.0f} images/s"
def speed_and_wait(run):  # the last logged interval: past the warm-up
    rows = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    last = [r for r in rows if "images_per_s" in r][-1]
    return f"{last['images_per_s']:.0f} images/s, waiting for data {100 * last['data_wait_fraction']:.0f} %"
def accuracies(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "test_acc" and isinstance(value, (int, float)):
                yield value
            yield from accuracies(value)
    elif isinstance(node, list):
        for value in node:
            yield from accuracies(value)
if step == "train":
    print(last_speed("run"))
elif step == "torchrun":
    print(last_speed("run-ddp"))
elif step == "lut":
    print(f"{len(json.loads((out / 'lut.json').read_text())['entries'])} blocks")
elif step == "eval":
    print(f"best test_acc {max(accuracies(json.loads((out / 'run' / 'eval.json').read_text()))):.1f}")
elif step == "export":
    print(f"{(out / 'model.onnx').stat().st_size / 1e6:.2f} MB onnx")
elif step == "paper_data":
    print(f"{sum(1 for _ in (out / 'paper-data' / 'train').rglob('*.jpg'))} training JPEGs")
elif step == "paper_scale":
    print(speed_and_wait("run-paper"))
elif step == "paper_scale_gpu_decode":
    print("refused on the CPU, as it must be" if dry_run else speed_and_wait("run-paper-gpu-decode"))
elif step == "step_bench":
    r = json.loads((out / "step.json").read_text())
    amp = f", amp/fp32 {r['amp_over_fp32']:.2f}" if "amp_over_fp32" in r else ""
    print(f"{r['images_per_s_pss']:.0f} images/s{amp}")
EOF
}

# run_step NAME CMD...: run, time and log one step; a failure is recorded, not fatal.
run_step() {
    local name="$1"; shift
    local log="$OUT_DIR/logs/$name.log" status=ok start end
    if [[ -n "${STEPS:-}" && " $STEPS " != *" $name "* ]]; then return 0; fi
    echo "== $name: $*"
    start=$(date +%s.%N)
    if ! (cd "$ROOT" && timeout --kill-after=10 "${STEP_TIMEOUT:-240}" "$@") >"$log" 2>&1; then
        status=FAILED
        FAILED=1
        tail -n 15 "$log" | sed 's/^/   | /'
    fi
    end=$(date +%s.%N)
    NAMES+=("$name"); STATUSES+=("$status")
    SECONDS_TAKEN+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')")
    if [[ "$status" == ok ]]; then FIGURES+=("$(figure "$name")"); else FIGURES+=("see logs/$name.log"); fi
    echo "   $status in ${SECONDS_TAKEN[-1]} s: ${FIGURES[-1]}"
}

rm -rf "$RUN" "$OUT_DIR/run-ddp" "$OUT_DIR/paper-data" "$OUT_DIR/run-paper" "$OUT_DIR/run-paper-gpu-decode"
run_step train "$PY" -m pssnet train "${COMMON_TRAIN[@]}" --out "$RUN"
run_step torchrun "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 \
    -m pssnet train "${COMMON_TRAIN[@]}" --out "$OUT_DIR/run-ddp"
run_step lut "$PY" -m pssnet lut build --arch mobilenet_v2 --small-input --in-chans 1 --num-classes 10 \
    --device "$DEVICE" "${LUT_SIZE[@]}" --force -o "$OUT_DIR/lut.json"
run_step eval "$PY" -m pssnet eval "$RUN" --device "$DEVICE" "${EVAL_SIZE[@]}"
run_step export "$PY" -m pssnet export "$RUN/adaptive.pt" --budget flops=24 --format onnx -o "$OUT_DIR/model.onnx"
run_step step_bench "$PY" benchmarks/step.py --device "$DEVICE" --amp "${BENCH_SIZE[@]}" --json "$OUT_DIR/step.json"
run_step paper_data "$PY" benchmarks/synthetic_jpegs.py "$OUT_DIR/paper-data" "${PAPER_IMAGES[@]}"
run_step paper_scale "$PY" -m pssnet train "${PAPER_TRAIN[@]}" --out "$OUT_DIR/run-paper"
if [[ "$DRY_RUN" == 1 ]]; then  # nvJPEG needs CUDA: on the CPU the flag must be refused in one line (exit 2)
    run_step paper_scale_gpu_decode bash -c 'out=$("$@" 2>&1); [[ $? == 2 && "$out" == *"--decode-on-device decodes JPEGs"* ]] || { echo "$out"; exit 1; }' \
        _ "$PY" -m pssnet train "${PAPER_TRAIN[@]}" --decode-on-device --out "$OUT_DIR/run-paper-gpu-decode"
else
    run_step paper_scale_gpu_decode "$PY" -m pssnet train "${PAPER_TRAIN[@]}" --decode-on-device \
        --out "$OUT_DIR/run-paper-gpu-decode"
fi

# Summary: a table on stdout and the same rows as JSON.
ROWS="$OUT_DIR/logs/summary.tsv"
: >"$ROWS"
for i in "${!NAMES[@]}"; do
    printf '%s\t%s\t%s\t%s\n' "${NAMES[$i]}" "${STATUSES[$i]}" "${SECONDS_TAKEN[$i]}" "${FIGURES[$i]}" >>"$ROWS"
done
"$PY" - "$DEVICE_NAME" "$DRY_RUN" "$ROWS" "$OUT_DIR/gpu_check.json" <<'EOF'
import json, sys
device, dry_run, rows_path, path = sys.argv[1], sys.argv[2] == "1", sys.argv[3], sys.argv[4]
keys = ("step", "status", "seconds", "figure")
rows = [dict(zip(keys, line.rstrip("\n").split("\t"))) for line in open(rows_path) if line.strip()]
for row in rows:
    row["seconds"] = float(row["seconds"])
print(f"\ngpu check on {device}" + (" (CPU dry run: command lines only, not CUDA)" if dry_run else ""))
width = max([11] + [len(r["step"]) for r in rows])
print(f"{'step':<{width}} {'status':<7} {'seconds':>8}  key figure")
for r in rows:
    print(f"{r['step']:<{width}} {r['status']:<7} {r['seconds']:>8.1f}  {r['figure']}")
summary = {"device": device, "cpu_dry_run": dry_run, "ok": all(r["status"] == "ok" for r in rows), "steps": rows}
with open(path, "w") as f:
    f.write(json.dumps(summary, indent=2) + "\n")
print(f"wrote {path}")
EOF

exit "$FAILED"
