#!/usr/bin/env bash
# gpu_check.sh: the checks that need a CUDA GPU, in one run of under 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # from anywhere; works in the repository root
#
# Stages, each under `timeout` (one that fails or runs out of time is recorded and the next
# still runs):
#   1. the `gpu`-marked tests: .venv/bin/python -m pytest -m gpu -q                 <= 110 s
#   2. benchmarks/step_cost.py on CUDA: PreActResNet18, batch 128, fp32 then bf16, channels_last
#      memory format; images per second for ERM and AMP K=1 (batch / median step time)   <= 140 s
#   3. a 4-trial sweep (MNIST-1D + cnn1d, device cuda, 2 epochs, random search, FIFO) with
#      resources {gpu: 0.25} per trial, so the four share the GPU; a temporary SQLite MLflow
#      store and Tune storage; nvidia-smi sampled meanwhile for how many trial processes
#      held the GPU at once; then `sweeps status --json` for the trials, and the device
#      each trial really trained on (its MLflow tag flatsweep.device)                   <= 180 s
# Then a "gpu_check" section is appended to benchmarks/RESULTS.md: the GPU (nvidia-smi name,
# driver, memory), the date (UTC), the commit, each stage's result and time, and the numbers.
# step_cost.py appends its own full tables there too, just before it.
#
# Without a CUDA device (no working nvidia-smi, or a torch that sees no GPU) it prints the
# single line "gpu_check: no CUDA device; skipped", exits 0 and writes nothing.
# Exit status otherwise: 0 when every stage passed, 1 when any failed or timed out.
# PYTHON overrides the interpreter (default .venv/bin/python; sweeps is taken beside it).
# GPU_CHECK_KEEP=DIR keeps each stage's log and numbers there (they are deleted otherwise).

set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
PY="${PYTHON:-.venv/bin/python}"
SWEEPS="$(dirname "$PY")/sweeps"
RESULTS=benchmarks/RESULTS.md
SKIP_LINE="gpu_check: no CUDA device; skipped"

# nvidia-smi first: on a machine without a driver this answers at once, before any torch import.
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "$SKIP_LINE"
    exit 0
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    >/dev/null 2>&1; then
    echo "$SKIP_LINE"
    exit 0
fi

# Every stage must have ended by DEADLINE seconds after the start; 8 minutes is 480 s, and
# the rest is for writing the results. A stage gets its own limit or what is left, if less;
# the limits below add up to 430 s, 450 s with each stage's KILL_AFTER.
DEADLINE=455
KILL_AFTER=5 # seconds between timeout's TERM and its KILL
WORK="$(mktemp -d -t gpu_check.XXXXXX)"
keep_work() {
    [ -n "${GPU_CHECK_KEEP:-}" ] && mkdir -p "$GPU_CHECK_KEEP" &&
        cp "$WORK"/*.log "$WORK"/*.json "$WORK"/*.txt "$GPU_CHECK_KEEP"/ 2>/dev/null
    rm -rf "$WORK"
}
trap keep_work EXIT
FAILED=0
STAGES=()

stage_limit() {
    local want=$1
    local left=$((DEADLINE - SECONDS - KILL_AFTER))
    ((left < want)) && want=$left
    ((want < 1)) && want=1
    echo "$want"
}

# run_stage NAME LIMIT_S COMMAND...: runs COMMAND under timeout with its output in
# $WORK/NAME.log, and records "| NAME | result | seconds |" in STAGES.
run_stage() {
    local name=$1 limit rc=0 started=$SECONDS result
    limit=$(stage_limit "$2")
    shift 2
    echo "gpu_check: $name (at most ${limit} s) ..."
    timeout --kill-after="$KILL_AFTER" "$limit" "$@" >"$WORK/$name.log" 2>&1 || rc=$?
    if ((rc == 124 || rc == 137)); then
        result="timed out after ${limit} s"
    elif ((rc != 0)); then
        result="failed (exit $rc)"
    else
        result="passed"
    fi
    if ((rc != 0)); then
        FAILED=1
        tail -n 20 "$WORK/$name.log" | sed "s/^/  $name: /"
    fi
    STAGES+=("| $name | $result | $((SECONDS - started)) |")
    echo "gpu_check: $name $result"
    return 0
}

# --- 1. the gpu-marked tests -------------------------------------------------------------
run_stage gpu_tests 110 "$PY" -m pytest -m gpu -q

# --- 2. step cost on CUDA ----------------------------------------------------------------
cat >"$WORK/step_cost_gpu.py" <<'PYEOF'
"""Runs benchmarks/step_cost.py in-process for fp32 and bf16 and writes images/s as JSON."""

import contextlib
import importlib.util
import io
import json
import sys

import torch

out_path = sys.argv[1]
spec = importlib.util.spec_from_file_location("step_cost", "benchmarks/step_cost.py")
step_cost = importlib.util.module_from_spec(spec)
sys.modules["step_cost"] = step_cost  # its dataclasses look their module up there
spec.loader.exec_module(step_cost)

help_text = io.StringIO()
with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    step_cost.parse_args(["--help"])
if "--channels-last" in help_text.getvalue():
    flags, how = ["--channels-last"], "step_cost.py --channels-last"
else:
    # step_cost.py has no memory-format option: build its models in channels_last instead.
    # cuDNN runs a convolution channels_last when its weight is, so the whole network does;
    # only the synthetic input batch stays contiguous until the first convolution.
    build = step_cost.models.build

    def build_channels_last(*args, **kwargs):
        return build(*args, **kwargs).to(memory_format=torch.channels_last)

    step_cost.models.build = build_channels_last
    flags, how = [], "model weights converted here (step_cost.py has no --channels-last)"

batch = 128
report = {"batch": batch, "channels_last": how, "rows": []}
for precision in ("fp32", "bf16"):
    argv = ["--device", "cuda", "--model", "preact_resnet18", "--batch", str(batch)]
    rows = step_cost.main([*argv, "--precision", precision, *flags])
    for row in rows:
        if row["method"] in ("ERM", "AMP K=1"):
            report["rows"].append(
                {
                    "precision": precision,
                    "method": row["method"],
                    "median_s": row["median_s"],
                    "images_per_s": batch / row["median_s"],
                    "ratio": row["ratio"],
                }
            )
with open(out_path, "w") as f:
    json.dump(report, f)
PYEOF
run_stage step_cost 140 "$PY" "$WORK/step_cost_gpu.py" "$WORK/step_cost.json"

# --- 3. a 4-trial sweep sharing the GPU --------------------------------------------------
cat >"$WORK/sweep.yaml" <<'YAMLEOF'
# Written by benchmarks/gpu_check.sh: four trials at a quarter GPU each, so all four run at once.
name: gpu_check
train:
  model: {name: cnn1d}
  data: {name: mnist1d, num_train: 4000, num_test: 1000}
  optim: {lr: 0.1, momentum: 0.9, weight_decay: 5e-4}
  schedule: {name: cosine}
  perturbation: {kind: amp}
  epochs: 2
  batch_size: 128
  seed: 0
  device: cuda
space:
  name: amp
  ranges: {perturbation.radius: [0.002, 0.2]}
searcher: {sampler: random, seed: 0}
scheduler: {name: fifo}
num_samples: 4
max_concurrent: 4
resources: {cpu: 1, gpu: 0.25}
metric: val_acc
mode: max
finalists: {top_k: 0}
YAMLEOF
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db"
export FLATSWEEP_STORAGE="$WORK/storage"
# How many processes hold the GPU, every second, while the sweep runs (trials are processes).
(
    while :; do
        nvidia-smi --query-compute-apps=pid --format=csv,noheader 2>/dev/null | grep -c . || true
        sleep 1
    done
) >"$WORK/gpu_processes.txt" &
SAMPLER=$!
run_stage sweep 150 "$SWEEPS" run "$WORK/sweep.yaml" --quiet
kill "$SAMPLER" 2>/dev/null
wait "$SAMPLER" 2>/dev/null
timeout --kill-after="$KILL_AFTER" "$(stage_limit 30)" "$SWEEPS" status gpu_check --json \
    >"$WORK/sweep_status.json" 2>>"$WORK/sweep.log"
# The device each trial really trained on, as its MLflow run records it (a GPU reservation
# that ran on CPU would show here as "cpu").
timeout --kill-after="$KILL_AFTER" "$(stage_limit 30)" "$PY" - "$WORK/devices.json" \
    >>"$WORK/sweep.log" 2>&1 <<'PYEOF'
import collections
import json
import sys

import mlflow

runs = mlflow.search_runs(
    search_all_experiments=True,
    filter_string="tags.`flatsweep.sweep` = 'gpu_check'",
    output_format="list",
)
tags = [r.data.tags for r in runs if "flatsweep.device" in r.data.tags]
with open(sys.argv[1], "w") as f:
    json.dump(
        {
            "devices": collections.Counter(t["flatsweep.device"] for t in tags),
            "gpu_reserved_on_cpu": sum(t.get("flatsweep.gpu_reserved_on_cpu") == "1" for t in tags),
        },
        f,
    )
PYEOF

# --- results -----------------------------------------------------------------------------
GPU="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader |
    head -n 1)"
CPU="$(grep -m 1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
COMMIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ "$COMMIT" != unknown ] && [ -n "$(git status --porcelain 2>/dev/null)" ]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi
TESTS_LINE="$(grep -E '(passed|failed|skipped|error|no tests ran)' "$WORK/gpu_tests.log" |
    tail -n 1)"
MAX_PROCS="$(sort -n "$WORK/gpu_processes.txt" 2>/dev/null | tail -n 1)"

SECTION="$WORK/section.md"
{
    echo
    echo "## gpu_check — $(date -u '+%Y-%m-%d %H:%M') UTC"
    echo
    echo "- machine: GPU ${GPU:-unknown} (nvidia-smi: name, driver, memory); CPU ${CPU:-unknown}," \
        "$(nproc) cores"
    echo "- code: $COMMIT"
    echo "- command: \`bash benchmarks/gpu_check.sh\` (stages under timeout; 8 min in all)"
    echo
    echo "| stage | result | seconds |"
    echo "|---|---|---:|"
    printf '%s\n' "${STAGES[@]}"
    echo
    echo "- gpu tests (\`pytest -m gpu -q\`): ${TESTS_LINE:-no summary line}"
    "$PY" - "$WORK/step_cost.json" "$WORK/sweep_status.json" "${MAX_PROCS:-}" \
        "$WORK/devices.json" <<'PYEOF'
import json
import sys

step_path, status_path, max_procs, devices_path = sys.argv[1:5]


def load(path):
    """A stage's JSON, or None when the stage wrote none (failed, timed out)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


report = load(step_path)
if report is None:
    print("- step cost: no numbers (the stage did not finish)")
else:
    print(
        f"- step cost: preact_resnet18, batch {report['batch']}, channels_last "
        f"({report['channels_last']}); the full tables are the step_cost sections just above."
    )
    print()
    print("| precision | method | median step s | images/s | × ERM step time |")
    print("|---|---|---:|---:|---:|")
    for r in report["rows"]:
        print(
            f"| {r['precision']} | {r['method']} | {r['median_s']:.4f} | "
            f"{r['images_per_s']:.0f} | {r['ratio']:.3f} |"
        )
    print()
status = load(status_path)
if status is None:
    print("- sweep: no status (the sweep did not record one)")
else:
    trials = status.get("trials", [])
    counts = {}
    for t in trials:
        counts[t["status"]] = counts.get(t["status"], 0) + 1
    accs = [t.get("val_acc") for t in trials if isinstance(t.get("val_acc"), float)]
    best = f"{max(accs):.4f}" if accs else "none"
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"
    seen = max_procs or "unknown"
    print(
        f"- sweep (4 trials, MNIST-1D + cnn1d, 2 epochs, gpu 0.25 each): sweep "
        f"{status.get('status')}; trials: {states}; best val_acc {best}; most processes on "
        f"the GPU at once (nvidia-smi, sampled each second): {seen}"
    )
devices = load(devices_path)
if devices is None:
    print("- devices the trials trained on: unknown (not read from MLflow)")
else:
    used = ", ".join(f"{d} × {n}" for d, n in sorted(devices["devices"].items())) or "none"
    print(
        f"- devices the trials trained on (MLflow tag flatsweep.device): {used}; GPU "
        f"reservations that ran on CPU: {devices['gpu_reserved_on_cpu']}"
    )
PYEOF
} >"$SECTION"

cat "$SECTION" >>"$RESULTS"
cat "$SECTION"
echo "gpu_check: appended to $RESULTS; $((SECONDS)) s in all"
exit "$FAILED"
