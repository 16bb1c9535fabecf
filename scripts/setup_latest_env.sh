#!/usr/bin/env bash
# Create (once) .venv-latest: the newest torch, torchvision, numpy and triton the package
# registry serves (on this machine's Python 3, not 3.10), detectron2's Python code, and
# sn_det with its CPU kernels built against that torch. `make test-latest` runs the suite
# there. Nothing is pinned: this environment checks sn_det against what users install today.
#
# detectron2 has no wheel for this Python; its Python code is taken from the sal-detectron2
# wheel (a cp310 wheel whose .py files are upstream detectron2's) without the compiled
# detectron2/_C, which does not load with torch >= 2.5: detectron2 then falls back to its
# Python paths (COCOeval in Python; deformable convolution is unavailable).
#
# Usage: bash scripts/setup_latest_env.sh   (SN_DET_LATEST_PYTHON=/path/to/python3 to choose)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-latest
stamp="$venv/.sn_det-installed"
want=$(cat setup.py sn_det/layers/csrc/* "$0" | sha256sum | cut -d' ' -f1)
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
py=${SN_DET_LATEST_PYTHON:-python3}
if ! "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: $py is not a Python >= 3.10 with venv; set SN_DET_LATEST_PYTHON." >&2
  exit 1
fi
rm -rf "$venv"
echo "[setup-latest] creating $venv with $("$py" --version)"
"$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
echo "[setup-latest] installing the newest torch, torchvision, numpy and sn_det's needs"
# setuptools < 81: detectron2's model_zoo imports pkg_resources, which 81 removed.
"${pip[@]}" --upgrade pip wheel "setuptools<81"
"${pip[@]}" torch torchvision numpy triton fvcore iopath yacs termcolor omegaconf hydra-core \
  pycocotools opencv-python-headless matplotlib tensorboard tabulate cloudpickle pytest \
  onnx onnxruntime
# panopticapi (PQ): its metadata pins numpy<2 and asks for scikit-image, which its code never
# imports; --no-deps keeps the newest numpy.
"${pip[@]}" --no-deps panopticapi-lite
echo "[setup-latest] adding detectron2's Python code (without its compiled _C)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
  --python-version 3.10 --only-binary=:all: -d "$tmp" sal-detectron2==0.7.2
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
"$venv/bin/python" -m zipfile -e "$tmp"/sal_detectron2-*.whl "$tmp/unpacked"
cp -r "$tmp/unpacked/detectron2" "$site/"
rm -f "$site"/detectron2/_C*.so
echo "[setup-latest] building sn_det and its CPU kernels against $("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)')"
SN_DET_NATIVE=1 "${pip[@]}" --no-build-isolation --no-deps -e .
"$venv/bin/python" -c "import sn_det, torch, numpy, triton; print('[setup-latest] torch', torch.__version__, 'numpy', numpy.__version__, 'triton', triton.__version__)"
echo "$want" > "$stamp"
