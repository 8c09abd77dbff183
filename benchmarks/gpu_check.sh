#!/usr/bin/env bash
# One-shot check of convkit's CUDA engine on a real GPU, under 8 minutes on an H100. Runs from the
# source tree and installs nothing: it needs a Python (python3, or $PYTHON) with a CUDA build of
# torch (2.11 or newer), numba-cuda (for whatever CUDA the machine has: 12 or 13) and pytest, as
# the GPU images carry them; convkit itself is found through PYTHONPATH.
#
#   bash benchmarks/gpu_check.sh            # tests, gpu-report, benchmarks vs cuDNN, goals
#   bash benchmarks/gpu_check.sh --quick    # the quick benchmark subset (SimpleCNN shapes)
#   bash benchmarks/gpu_check.sh --commit   # also git-commit the results folder
#
# Steps, each with its own time limit and log under benchmarks/results/cuda-<device>/:
#   1. pytest tests/test_cuda_gpu.py on the GPU (parity with cuDNN, TF32 off)
#   2. tests/test_cuda_sim.py on the real GPU (CONVKIT_SIM_TESTS_ON_GPU=1, shipped tiles)
#   3. convkit gpu-report --arch sm_90 (compiled machine code, gates)
#   4. python -m convkit.bench --device cuda: every benchmark shape against cuDNN; its `torch`
#      column runs with torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32
#      = False (fair fp32), a `torch-tf32` column with TF32 on
#   5. benchmarks/cuda_gemm.py: the GEMM vs cuBLAS (TF32 off) and the launch cost per op
#   6. the CUDA engine's goals, judged from 4 and 5, printed and written to goals.md
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # convkit from this tree, not installed
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
python() { "$PYTHON" "$@"; }  # for the inline scripts; steps name "$PYTHON" (timeout runs them)

QUICK=""
COMMIT=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK="--quick" ;;
    --commit) COMMIT=1 ;;
    *) echo "usage: bash benchmarks/gpu_check.sh [--quick] [--commit]" >&2; exit 2 ;;
  esac
done

BUDGET_S=${GPU_CHECK_BUDGET_S:-470}  # the whole run stays under 8 minutes
export PYTHONUNBUFFERED=1

python - <<'EOF' || { echo "gpu_check: torch sees no CUDA device; nothing to check" >&2; exit 2; }
import torch, sys
sys.exit(0 if torch.cuda.is_available() else 1)
EOF

LABEL=$(python - <<'EOF'
import re, torch
try:
    from convkit.bench import device_label
except ImportError:
    try:
        from convkit.bench.machine import device_label
    except ImportError:
        device_label = None
if device_label is not None:
    print(device_label(torch.device("cuda")))
else:
    print("cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-"))
EOF
)
OUT="benchmarks/results/$LABEL"
mkdir -p "$OUT"
DEVICE_NAME=$(python -c "import torch; print(torch.cuda.get_device_name())")
echo "gpu_check on $DEVICE_NAME -> $OUT/"
{
  echo "device: $DEVICE_NAME"
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  python -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda,
'cudnn', torch.backends.cudnn.version(), 'numba', numba.__version__)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null
} > "$OUT/machine.txt"
cat "$OUT/machine.txt"

declare -A STATUS
ORDER=()
# step NAME LIMIT_S COMMAND...: run with a time limit (cut to what is left of the budget)
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if [ "$left" -lt 20 ]; then
    STATUS[$name]="skipped (time budget spent)"
    ORDER+=("$name")
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo
  echo "== $name (limit ${limit}s) =="
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  case "$rc" in
    0) STATUS[$name]="ok" ;;
    124|137) STATUS[$name]="TIMED OUT after ${limit}s" ;;
    *) STATUS[$name]="FAILED (exit $rc)" ;;
  esac
  STATUS[$name]+=" in $((SECONDS - t0)) s"
  ORDER+=("$name")
}

step tests_cuda_gpu 120 "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_gpu.py
step tests_sim_on_gpu 80 env CONVKIT_SIM_TESTS_ON_GPU=1 \
  "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda_sim.py
step gpu_report 60 "$PYTHON" -m convkit gpu-report --arch sm_90 --out "$OUT/gpu-report"
step bench 170 "$PYTHON" -m convkit.bench --device cuda $QUICK --min-time 0.2 \
  --report benchmarks/results --json "$OUT/bench.json"
step gemm_and_launch 40 "$PYTHON" benchmarks/cuda_gemm.py --size 4096 --reps 10

echo
echo "== goals =="
python - "$OUT" <<'EOF' | tee "$OUT/goals.md"
import json, os, re, sys

out = sys.argv[1]
rows = []
try:
    with open(os.path.join(out, "bench.json")) as f:
        rows = json.load(f)["rows"]
except (OSError, ValueError, KeyError):
    pass
try:
    gemm_log = open(os.path.join(out, "gemm_and_launch.log")).read()
except OSError:
    gemm_log = ""

def verdict(ok):
    return "n/a (not measured)" if ok is None else ("yes" if ok else "NO")

lines = ["| goal | measured | met |", "|---|---|---|"]
# SimpleCNN layers: convkit (auto / convkit) time <= 2x cuDNN fp32 (TF32 off) time
layer = [r for r in rows if str(r.get("shape", "")).startswith(("simplecnn-conv", "simplecnn-act"))
         and r.get("impl") in ("auto", "convkit") and r.get("ratio")]
worst = max(layer, key=lambda r: r["ratio"], default=None)
lines.append("| SimpleCNN layers >= 0.5x cuDNN fp32 speed (time ratio <= 2.0) | "
             + (f"worst {worst['shape']} {worst['op']} {worst['ratio']:.2f}x time "
                f"({len(layer)} rows)" if worst else "-")
             + f" | {verdict(None if worst is None else worst['ratio'] <= 2.0)} |")
m = re.search(r"torch\.float32.*?convkit speed / cuBLAS speed =\s*([0-9.]+)", gemm_log)
share = float(m.group(1)) if m else None
lines.append("| GEMM >= 50 % of cuBLAS (fp32, 4096^3, TF32 off) | "
             + (f"{100 * share:.0f} %" if share is not None else "-")
             + f" | {verdict(None if share is None else share >= 0.5)} |")
m = re.search(r"convkit\.functional\.relu\s+([0-9.]+) us", gemm_log)
raw = re.search(r"raw kernel relu_forward\s+([0-9.]+) us", gemm_log)
launch = float(m.group(1)) if m else None
lines.append("| < 20 us launch cost per op (functional.relu on 1x1x8x8, host time per call) | "
             + (f"{launch:.1f} us" + (f" (raw kernel {raw.group(1)} us)" if raw else "")
                if launch is not None else "-")
             + f" | {verdict(None if launch is None else launch < 20)} |")
train = [r for r in rows if r.get("op") == "train_step" and r.get("impl") == "auto"
         and r.get("ratio")]
if train:
    lines.append(f"| (info) SimpleCNN training step vs torch fp32 | {train[0]['ratio']:.2f}x time "
                 "| - |")
print("\n".join(lines))
EOF

{
  echo
  echo "steps:"
  for name in "${ORDER[@]}"; do echo "  $name: ${STATUS[$name]}"; done
  echo "total: ${SECONDS} s"
} | tee "$OUT/steps.txt"

if [ "$COMMIT" -eq 1 ]; then
  git add "$OUT" && git commit -m "GPU check on $DEVICE_NAME: tests, sm_90 report, benchmarks vs cuDNN (TF32 off), goals (benchmarks/gpu_check.sh)" -- "$OUT"
fi
for name in "${ORDER[@]}"; do
  case "${STATUS[$name]}" in ok*) ;; *) exit 1 ;; esac
done
exit 0
