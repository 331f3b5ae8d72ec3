#!/usr/bin/env bash
# Set up the environment and run the main job on the built-in synthetic demo data.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
run="${1:-runs/demo}"
if [ -f "$run/config.json" ]; then
  resume=(--resume)  # a second call continues (or just re-reports) the same run
else
  resume=()
fi
# --quiet: progress bars, warnings, one results table and the headline; the log is in $run/run.log
"$VENV_PYTHON" -m noisystudent.cli kfold --out "$run" --quiet "${resume[@]}"
"$VENV_PYTHON" -m noisystudent.cli report "$run"
