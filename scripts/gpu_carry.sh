#!/usr/bin/env bash
# Build .gpu_carry/site: the Python packages sn_det needs that the project's GPU machine
# lacks (detectron2's Python code, fvcore, iopath, yacs, termcolor, omegaconf, hydra-core,
# antlr4, pycocotools, panopticapi), for Python 3.12 on x86_64, in about 8 MB. That machine
# has torch, triton, numpy, opencv, matplotlib, pytest but no package registry, so the folder
# travels with the checkout (the device tool's `carry`); scripts/gpu_checks.sh puts it on
# PYTHONPATH there.
#
# Usage (here, with the registry reachable): bash scripts/gpu_carry.sh
# detectron2's compiled _C (cp310) is left out: without it detectron2 falls back to Python
# (deformable conv and the fast COCOeval are the only losses).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-.venv/bin/python}
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "error: $python is not a Python with pip; run 'make env' first or set PYTHON" >&2
  exit 1
fi
dest=.gpu_carry/site
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pin() { grep -i "^$1==" constraints.txt | cut -d= -f3; }  # the pinned version of a package

pip=("$python" -m pip --disable-pip-version-check)
pure=(fvcore iopath yacs termcolor omegaconf antlr4-python3-runtime hydra-core panopticapi-lite)
specs=()
for p in "${pure[@]}"; do specs+=("$p==$(pin "$p")"); done
echo "[gpu-carry] downloading ${specs[*]}"
"${pip[@]}" download --quiet --no-deps -d "$tmp/pure" "${specs[@]}"
echo "[gpu-carry] downloading pycocotools for cp312 and the sal-detectron2 wheel"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$tmp/bin" "pycocotools==$(pin pycocotools)"
"${pip[@]}" download --quiet --no-deps --only-binary=:all: --python-version 3.10 \
  -d "$tmp/d2" "sal-detectron2==$(pin sal-detectron2)"

rm -rf "$dest.new"
mkdir -p "$dest.new"
# Pure-Python packages (some are sdists, built here; the result runs on any Python 3).
"${pip[@]}" install --quiet --no-deps --no-compile --target "$dest.new" "$tmp"/pure/*
"$python" -m zipfile -e "$tmp"/bin/pycocotools-*.whl "$dest.new"
"$python" -m zipfile -e "$tmp"/d2/sal_detectron2-*.whl "$dest.new"
rm -f "$dest.new"/detectron2/_C*.so
rm -rf "$dest.new"/bin "$dest.new"/*.dist-info/RECORD
# One rename: a half-built folder never replaces a good one.
rm -rf "$dest"
mv "$dest.new" "$dest"
echo "[gpu-carry] $dest: $(du -sh "$dest" | cut -f1); pass .gpu_carry to the device run's carry"
