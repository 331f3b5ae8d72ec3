#!/usr/bin/env bash
# Time the CPU demo: `noisystudent kfold` on the built-in synthetic data, in a fresh
# temporary run folder (demo data generation included), and print the seconds.
# Usage: scripts/bench_demo.sh [extra kfold flags...]   Target on 2 CPU cores: <= 180 s.
# Env: VENV_PYTHON (default .venv/bin/python), TARGET_S (default 180), KEEP=1 keeps the run folder.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${VENV_PYTHON:-$repo/.venv/bin/python}"
target="${TARGET_S:-180}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/bench-demo-XXXXXX")"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$tmp"' EXIT
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"  # works without `pip install -e .` too
start=$(date +%s.%N)
"$python" -m noisystudent.cli kfold --out "$tmp/run" --quiet "$@" > "$tmp/kfold.log" 2>&1 || {
  status=$?; tail -n 30 "$tmp/kfold.log" >&2; echo "bench_demo: kfold failed (exit $status)" >&2; exit "$status"; }
end=$(date +%s.%N)
seconds=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')
load=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo "?")
verdict=$(awk -v s="$seconds" -v t="$target" 'BEGIN { print (s <= t) ? "within" : "OVER" }')
echo "demo kfold: ${seconds} s (${verdict} the ${target} s target; $(nproc) cores, torch threads default, load ${load}, OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-unset})"
