#!/usr/bin/env bash
# Convert the published ImageNet SN models for the sn_baselines recipes (the seed's
# convert.sh). Usage: bash scripts/convert.sh DIR_WITH_PUBLISHED_PTH [OUT_DIR=pretrained]
# Expects DIR/resnet50_sn_8x32.pth and/or DIR/resnet50_sn_8x1.pth; converts each one found.
# PYTHON (environment): the interpreter with sn_det installed, default `python`.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: scripts/convert.sh DIR_WITH_PUBLISHED_PTH [OUT_DIR]" >&2
  exit 2
fi
src=$1
dst=${2:-pretrained}
root=$(cd "$(dirname "$0")/.." && pwd)  # paths given by the caller stay relative to $PWD
found=0
for name in resnet50_sn_8x32 resnet50_sn_8x1 resnet101_sn_8x32; do
  if [[ -f "$src/$name.pth" ]]; then
    found=1
    "${PYTHON:-python}" "$root/tools/convert_sn_to_d2.py" --ckpt "$src/$name.pth" --dst "$dst/$name.pth"
  fi
done
if [[ $found == 0 ]]; then
  echo "error: no resnet*_sn_*.pth in $src" >&2
  exit 2
fi
