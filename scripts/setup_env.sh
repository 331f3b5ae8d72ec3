#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install noisystudent into it.
# Source-able: sets VENV_PYTHON. Override the torch build with TORCH_SPEC, the venv with NOISYSTUDENT_VENV.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NOISYSTUDENT_VENV:-$repo/.venv}"
torch_spec="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv"
  "$python" -m venv "$venv"
fi
VENV_PYTHON="$venv/bin/python"
if ! "$VENV_PYTHON" -c "import torch, torchvision" 2>/dev/null; then
  echo "setup: installing $torch_spec"
  "$VENV_PYTHON" -m pip install -q --upgrade pip
  # shellcheck disable=SC2086
  "$VENV_PYTHON" -m pip install -q $torch_spec
fi
echo "setup: installing noisystudent (editable, with the test, lite, onnx and tensorboard extras)"
"$VENV_PYTHON" -m pip install -q -e "$repo[test,lite,onnx,tensorboard]"
export VENV_PYTHON
