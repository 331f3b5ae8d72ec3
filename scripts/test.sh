#!/usr/bin/env bash
# Set up the environment and run the whole test suite (CPU, generated images).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
source "$repo/scripts/setup_env.sh"
cd "$repo"
exec "$VENV_PYTHON" -m pytest -q "$@"
