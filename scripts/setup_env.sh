#!/usr/bin/env bash
# Create (once) the project-local virtual environment .venv with Python 3.10 and the pinned
# working set from constraints.txt, and install sn_det into it in editable mode.
#
# Usage: bash scripts/setup_env.sh        (the Makefile runs it before `make test` / `make demo`)
# Set SN_DET_PYTHON=/path/to/python3.10 to choose the interpreter.
#
# Re-running is free: a stamp file records the hash of the inputs that decide what gets
# installed (constraints.txt, setup.py, the C++ sources); nothing is redone while they are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv
stamp="$venv/.sn_det-installed"
# Inputs that decide what is installed or compiled: pins, setup.py, the C++ kernels.
want=$(cat constraints.txt setup.py sn_det/layers/csrc/* "$0" | sha256sum | cut -d' ' -f1)

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi

find_python() {
  local candidates=()
  if [[ -n "${SN_DET_PYTHON:-}" ]]; then
    candidates=("$SN_DET_PYTHON")  # an explicit choice is the only one tried
  else
    candidates+=(python3.10)
    candidates+=("${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python)
    candidates+=(/root/.pyenv/versions/3.10*/bin/python /usr/bin/python3.10 /usr/local/bin/python3.10)
  fi
  local c
  for c in "${candidates[@]}"; do
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [[ ! -x "$venv/bin/python" ]]; then
  if ! py=$(find_python); then
    if [[ -n "${SN_DET_PYTHON:-}" ]]; then
      echo "error: SN_DET_PYTHON=$SN_DET_PYTHON is not a Python 3.10 with venv (the detectron2 wheel is cp310)." >&2
    else
      echo "error: sn_det needs Python 3.10 (the detectron2 wheel is cp310) and found none in" \
           "python3.10 on PATH, ~/.pyenv/versions/3.10*, /usr/bin or /usr/local/bin; set SN_DET_PYTHON." >&2
    fi
    exit 1
  fi
  echo "[setup] creating $venv with $py"
  "$py" -m venv "$venv"
fi

echo "[setup] installing the pinned working set into $venv (first time: a few minutes)"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt \
  "wheel" "torch==2.3.1" "torchvision==0.18.1" "sal-detectron2==0.7.2" "fvcore" "iopath" \
  "pycocotools" "opencv-python-headless" "matplotlib" "tensorboard" "pytest" \
  "onnx" "onnxruntime"  # the export tests
# PQ for panoptic evaluation (detectron2's COCOPanopticEvaluator imports panopticapi). Its
# metadata asks for numpy<2 and scikit-image, which its code never imports: --no-deps.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -c constraints.txt \
  --no-deps "panopticapi-lite"
# --no-build-isolation: setup.py compiles sn_det's CPU kernels against the venv's torch.
echo "[setup] building sn_det and its CPU kernels"
# SN_DET_NATIVE=1: this .venv is only ever used on the machine that builds it, so the kernels
# may use every vector instruction this CPU has (setup.py alone stays portable).
SN_DET_NATIVE=1 "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  -c constraints.txt --no-build-isolation --no-deps -e .
"$venv/bin/python" -c "import sn_det, detectron2._C" # fail here, not in the middle of a job
echo "$want" > "$stamp"
echo "[setup] done: $venv is ready"
