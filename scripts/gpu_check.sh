#!/usr/bin/env bash
# One prepared GPU check of the CUDA-only paths (issue 17), within a fixed time budget.
#
#   scripts/gpu_check.sh          # on a CUDA machine: everything on cuda
#   scripts/gpu_check.sh --cpu    # dry run of the same steps on the CPU at tiny sizes (checks the script)
#
# Writes every log, the benchmark JSONs and summary.txt to $OUT (default runs/gpu-check).
# Each step has its own `timeout`, and a step is skipped when the overall budget
# (GPU_CHECK_BUDGET_S, default 420 s) has too little left for it, so a hang cannot eat the
# budget and the later steps still run. Steps, in order of priority:
#   00 versions: nvidia-smi, python, torch, CUDA, bf16 support, efficientnet_pytorch
#   01 demo data (noisystudent data demo)
#   02 kfold --amp fp16 on the device (2 folds, 1 round, 2 epochs, 48 px)
#   03 cross-device resume: a --device cpu --amp fp16 run SIGKILLed after its first
#      checkpoint.pt, resumed with --device cuda --amp fp16 (the crash of issue 17, item 1)
#   04 kfold with the default amp (bf16 where native)
#   05-08 bench_throughput.py at batch 128 and 15, without and with --compile
#   09 kfold --compile --head-warmup-epochs 1 with TORCH_LOGS=recompiles: counts recompiles
#   10 the CUDA-only pytest tests, when pytest is importable
#   11-15 issue 24, run in the order 14, 13, 15, 11, 12: the measured protocol slice (bench_throughput.py
#      --protocol cnmc-study --concurrent 5, one epoch of each model; last line protocol_minutes=X),
#      inference (c) with cuDNN autotuning at batch 1024, bench_batched.py (5 fold models at batch 15
#      sequentially vs vmap-batched; batched_speedup=X), kfold --concurrent 3, and
#      kfold --compile --compile-mode reduce-overhead (CUDA graphs)
# efficientnet_pytorch may be absent there: put it (pure Python) in .carry/site.
set -o pipefail
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
MODE=gpu
[ "${1:-}" = "--cpu" ] && MODE=cpu
OUT="${OUT:-$REPO/runs/gpu-check}"
PY="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-420}"
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")"  # data, runs and BMPs: not sent back
export PYTHONPATH="$REPO/.carry/site:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
export PYTHONUNBUFFERED=1
NS=("$PY" -m noisystudent.cli)
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
: > "$OUT/steps.tsv"

if [ "$MODE" = gpu ]; then
  DEV=cuda
  BENCH_SIZE=(--images 2000 --source-size 450 --size 224 --steps 30 --warmup 5 --eval-batch 512)
  KF_SIZE=(--folds 2 --rounds 1 --epochs 2 --image-size 48 --batch-size 16)
  PROTOCOL_SIZE=(--images 10000 --source-size 450 --size 224 --concurrent 5 --slice-epochs 1)
  BATCHED_SIZE=(--models 5 --batch 15 --size 224 --steps 20 --warmup 3)
else
  DEV=cpu
  BENCH_SIZE=(--images 48 --source-size 64 --size 32 --steps 2 --warmup 1 --eval-batch 16 --threads 2)
  KF_SIZE=(--folds 2 --rounds 1 --epochs 2 --image-size 32 --batch-size 16)
  PROTOCOL_SIZE=(--images 60 --source-size 24 --size 16 --concurrent 2 --slice-epochs 1 --protocol-folds 2 --protocol-rounds 1 --threads 2)
  BATCHED_SIZE=(--models 2 --batch 4 --size 32 --steps 2 --warmup 1 --threads 2)
fi
DEMO=(--preset demo --weights none --workers 4 --eval-batch-size 128)

elapsed() { echo $(( $(date +%s) - START )); }

# step NAME CAP_S MIN_S CMD...: run CMD with timeout min(CAP_S, budget left), log to $OUT/NAME.log.
# CMD may be a function of this script: it then runs in `bash -c` with the functions and settings.
step() {
  local name=$1 cap=$2 need=$3; shift 3
  if [ -n "${GPU_CHECK_ONLY:-}" ] && ! [[ $name =~ ^(${GPU_CHECK_ONLY}) ]]; then return 0; fi
  if declare -F "$1" > /dev/null; then
    set -- bash -c "$(declare -f); $(declare -p MODE OUT PY DEV BENCH_SIZE KF_SIZE PROTOCOL_SIZE DEMO NS WORK DATA); set -o pipefail; $*"
  fi
  local left=$(( BUDGET_S - $(elapsed) ))
  local limit=$(( cap < left ? cap : left ))
  if [ "$limit" -lt "$need" ]; then
    printf '%s\tskipped\t0\tonly %ss of the budget left\n' "$name" "$left" >> "$OUT/steps.tsv"
    echo "== $name: SKIPPED (only ${left}s of the budget left, needs ${need}s)"
    return 0
  fi
  echo "== $name (timeout ${limit}s, at $(elapsed)s)"
  local t0=$(date +%s) rc
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  local took=$(( $(date +%s) - t0 ))
  local status=ok
  [ $rc -ne 0 ] && status="FAILED rc=$rc"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && status="TIMEOUT"
  printf '%s\t%s\t%s\t\n' "$name" "$status" "$took" >> "$OUT/steps.tsv"
  echo "   $status in ${took}s; last lines:"
  tail -n 4 "$OUT/$name.log" | cut -c1-200 | sed 's/^/   | /'
  return 0
}

versions() {
  if [ "$MODE" = gpu ]; then nvidia-smi || echo "nvidia-smi failed"; fi
  "$PY" - <<'EOF'
import platform, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0),
          "count", torch.cuda.device_count())
    print("bf16 native", torch.cuda.is_bf16_supported(including_emulation=False))
    free, total = torch.cuda.mem_get_info()
    print(f"memory free {free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB")
import efficientnet_pytorch, noisystudent
print("efficientnet_pytorch", efficientnet_pytorch.__file__)
print("noisystudent", noisystudent.__file__)
from noisystudent.device import amp_dtype
print("auto amp on this device:", amp_dtype("auto", torch.device("cuda" if torch.cuda.is_available() else "cpu")))
EOF
}

# A --device cpu run killed (SIGKILL) right after its first checkpoint.pt, then resumed on $DEV with fp16.
cross_device_resume() {
  local run="$WORK/xdev"
  "${NS[@]}" kfold "$DATA" --out "$run" "${DEMO[@]}" "${KF_SIZE[@]}" --epochs 3 --device cpu --amp fp16 --quiet &
  local pid=$! waited=0
  until [ -n "$(find "$run" -name checkpoint.pt 2>/dev/null | head -n 1)" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then echo "CPU run ended before writing a checkpoint"; wait "$pid"; return 1; fi
    sleep 0.05; waited=$((waited + 1))
    if [ $waited -gt 2400 ]; then echo "no checkpoint after 120 s"; kill -9 "$pid"; return 1; fi
  done
  kill -9 "$pid"; wait "$pid" 2>/dev/null
  echo "CPU run killed after writing: $(find "$run" -name checkpoint.pt)"
  "$PY" - "$run" <<'EOF'
import sys, pathlib, torch
for path in pathlib.Path(sys.argv[1]).rglob("checkpoint.pt"):
    saved = torch.load(path, map_location="cpu", weights_only=False)
    groups = saved["optimizer"]["param_groups"]
    print(path, "next_epoch", saved["next_epoch"], "saved fused:", groups[0].get("fused"),
          "cuda rng states:", len(saved["rng"].get("cuda", [])), "scaler:", saved.get("scaler") is not None)
EOF
  # info logging on (no --quiet): the trainer logs "resuming at epoch N"
  "${NS[@]}" kfold --out "$run" --resume --device "$DEV" --amp fp16
}

recompile_kfold() {
  TORCH_LOGS=recompiles "${NS[@]}" kfold "$DATA" --out "$WORK/kf-compile" "${DEMO[@]}" "${KF_SIZE[@]}" \
    --device "$DEV" --compile --head-warmup-epochs 1 --quiet
}

gpu_tests() {
  if ! "$PY" -c "import pytest" 2>/dev/null; then echo "pytest is not importable here: skipped"; return 0; fi
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cache.py tests/test_gpu_paths.py -m "not slow"
}

bench() {  # bench NAME ARGS...
  local name=$1; shift
  step "$name" "$BENCH_CAP" 40 "$PY" scripts/bench_throughput.py --device "$DEV" "${BENCH_SIZE[@]}" \
    --cache-dir "$WORK/bench" --json "$OUT/$name.json" "$@"
}

DATA="$WORK/data"
echo "gpu_check ($MODE) -> $OUT, budget ${BUDGET_S}s, work folder $WORK"
step 00-versions 60 10 versions
DATA="$WORK/data"
[ -n "${GPU_CHECK_DATA:-}" ] && DATA="$GPU_CHECK_DATA"  # dry runs: reuse generated demo data
[ -d "$DATA" ] || step 01-demo-data 60 10 "${NS[@]}" data demo "$DATA"
step 02-kfold-fp16 120 30 "${NS[@]}" kfold "$DATA" --out "$WORK/kf-fp16" "${DEMO[@]}" "${KF_SIZE[@]}" --device "$DEV" --amp fp16 --quiet
step 03-resume-cpu-to-$DEV 150 40 cross_device_resume
step 04-kfold-auto-amp 120 30 "${NS[@]}" kfold "$DATA" --out "$WORK/kf-auto" "${DEMO[@]}" "${KF_SIZE[@]}" --device "$DEV" --quiet
if [ -n "${GPU_CHECK_CNMC:-}" ] && [ -f "$GPU_CHECK_CNMC" ]; then  # the real C-NMC sample, cnmc-study code path at 224 px
  mkdir -p "$WORK/cnmc" && tar -xzf "$GPU_CHECK_CNMC" -C "$WORK/cnmc"
  step 04b-kfold-cnmc-224 120 30 "${NS[@]}" kfold "$WORK/cnmc" --out "$WORK/kf-cnmc" --preset cnmc-study --weights none \
    --folds 2 --rounds 1 --epochs 2 --device "$DEV" --quiet
fi
BENCH_CAP=90
bench 05-bench-b128 --batch 128
bench 06-bench-b15 --batch 15
step 10-gpu-tests 90 30 gpu_tests
# issue 24, most telling first: the measured protocol slice, inference after warm-up, batched vs sequential
step 14-protocol-slice 400 120 "$PY" scripts/bench_throughput.py --protocol cnmc-study --device "$DEV" \
  --cache-dir "$WORK/protocol" --json "$OUT/14-protocol.json" "${PROTOCOL_SIZE[@]}"
BENCH_CAP=120
bench 13-bench-infer-autotune --batch 128 --eval-batch 1024 --cudnn-benchmark --infer-repeats 3
step 15-batched-vs-sequential 90 30 "$PY" scripts/bench_batched.py --device "$DEV" "${BATCHED_SIZE[@]}" \
  --json "$OUT/15-batched.json"
step 11-kfold-concurrent 150 40 "${NS[@]}" kfold "$DATA" --out "$WORK/kf-concurrent" "${DEMO[@]}" "${KF_SIZE[@]}" --folds 3 \
  --device "$DEV" --concurrent 3
if [ "$MODE" = gpu ] || [ "${GPU_CHECK_COMPILE:-0}" = 1 ]; then
  step 09-kfold-compile-recompiles 150 60 recompile_kfold
  step 12-kfold-cuda-graphs 180 60 "${NS[@]}" kfold "$DATA" --out "$WORK/kf-graphs" "${DEMO[@]}" "${KF_SIZE[@]}" \
    --device "$DEV" --compile --compile-mode reduce-overhead
  BENCH_CAP=150
  bench 07-bench-b128-compile --batch 128 --compile
  bench 08-bench-b15-compile --batch 15 --compile
else
  echo "== 07-09 (--compile) skipped in the CPU dry run (GPU_CHECK_COMPILE=1 runs them)"
fi

# --- summary -------------------------------------------------------------------------------------
"$PY" - "$OUT" "$(elapsed)" > "$SUMMARY" <<'EOF'
import json, re, sys
from pathlib import Path
out, total = Path(sys.argv[1]), sys.argv[2]
def log(name):
    hits = sorted(out.glob(f"{name}*.log"))
    return hits[0].read_text(errors="replace") if hits else ""
print(f"gpu_check summary (total {total}s)")
print(f"{'step':34} {'status':14} {'s':>5}")
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, took, note = (line.split("\t") + ["", "", "", ""])[:4]
    print(f"{name:34} {status:14} {took:>5} {note}")
versions = log("00-versions")
for key in ("torch ", "device ", "bf16 native", "auto amp", "memory free"):
    print(" ", next((l for l in versions.splitlines() if l.startswith(key)), f"{key.strip()}: ?"))
print("bench (img/s): (a) model-only, (b) full step, (b)/(a), (c) inference, peak GiB of (b), host syncs in the warm-up epoch")
for path in sorted(out.glob("*-bench-*.json")):
    rows = json.loads(path.read_text())["rows"]
    pick = lambda prefix: next((r for r in rows if r["phase"].startswith(prefix)), {})  # noqa: E731
    a, b, ratio, c = (pick(k).get("value") for k in ("(a) ", "(b) ", "(b)/(a)", "(c) "))
    full = pick("(b) ")
    fmt = lambda v, s=",.0f": "-" if v is None else format(v, s)
    print(f"  {path.stem:28} (a) {fmt(a):>7} (b) {fmt(b):>7} (b)/(a) {fmt(ratio, '.2f'):>5} (c) {fmt(c):>7} "
          f"peak {fmt(full.get('peak_gib'), '.1f'):>5} GiB  {full.get('note', '')}")
protocol = log("14-protocol")
print("protocol slice:", next((l.strip() for l in reversed(protocol.splitlines()) if l.startswith("protocol_minutes=")), "no result"))
batched = log("15-batched")
print("batched vs sequential:", next((l.strip() for l in reversed(batched.splitlines()) if l.startswith("batched_speedup=")), "no result"))
resume = log("03-resume")
print("cross-device resume:", "resumed:" if "resuming at epoch" in resume else "NO 'resuming at epoch' line;",
      next((l.strip() for l in resume.splitlines() if "resuming at epoch" in l), ""))
print("  saved checkpoint:", next((l.strip() for l in resume.splitlines() if "saved fused" in l), "?"))
for name in ("02-kfold-fp16", "03-resume", "04-kfold-auto-amp", "04b-kfold-cnmc", "09-kfold-compile"):
    text = log(name)
    errors = [l for l in text.splitlines() if re.search(r"Error|Traceback|error:", l)]
    if errors:
        print(f"  {name}: {errors[-1][:160]}")
recompiles = log("09-kfold-compile")
if recompiles:
    n = len(re.findall(r"Recompiling function", recompiles))
    limit = "cache_size_limit" in recompiles or "recompile_limit" in recompiles
    print(f"kfold --compile --head-warmup-epochs 1: {n} recompile(s) logged (target: <= 1, teacher->student dropout);"
          f" limit hit: {limit}")
    for line in [l for l in recompiles.splitlines() if "triggered by" in l or "guard" in l.lower()][:6]:
        print("   ", line.strip()[:160])
tests = log("10-gpu-tests").strip().splitlines()
print("gpu tests:", tests[-1] if tests else "-")
EOF
cat "$SUMMARY"
rm -rf "$WORK"
