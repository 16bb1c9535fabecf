#!/usr/bin/env bash
# Convert the authors' published SN ResNets for the sn_baselines recipes (the seed's
# convert.sh). Usage: bash scripts/convert.sh DIR_WITH_PUBLISHED_PTH [OUT_DIR=pretrained]
# Converts every .pth in DIR whose name says depth and ImageNet setting (8,k):
#   ResNet50v1+SN(8,32)-77.49.pth, ResNet101v1+SN(8,32)-78.54.pth   (ImageNet downloads)
#   resnet-sn-50-(8,2).pth                   (the authors' tools/convert.py output names)
#   resnet50_sn_8x1.pth                      (sn_det's own names)
# into OUT_DIR/resnet{depth}_sn_8x{k}.pth, the MODEL.WEIGHTS paths of the recipes. Files are
# chosen by name only. The authors' Detectron.pytorch backbones ((8,2) and (8,1), with or
# without FPN) convert too (the converter recognises their layout by content) once named as
# above; or convert them one by one with tools/convert_sn_to_d2.py.
# PYTHON (environment): the interpreter with sn_det installed, default `python`.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: scripts/convert.sh DIR_WITH_PUBLISHED_PTH [OUT_DIR]" >&2
  exit 2
fi
src=$1
dst=${2:-pretrained}
root=$(cd "$(dirname "$0")/.." && pwd)  # paths given by the caller stay relative to $PWD
if [[ ! -d $src ]]; then
  echo "error: $src is not a folder (give the folder that holds the downloaded .pth files)" >&2
  exit 2
fi
shopt -s nullglob nocasematch
# depth and k of the (8,k) setting from a file name, or nothing
patterns=(
  'resnet([0-9]+)v1\+sn\(8, ?([0-9]+)\)'
  'resnet-?sn-([0-9]+)-\(8, ?([0-9]+)\)'
  'resnet([0-9]+)_sn_8x([0-9]+)'
)
found=0
for path in "$src"/*.pth; do
  name=$(basename "$path")
  for re in "${patterns[@]}"; do
    if [[ $name =~ $re ]]; then
      out="$dst/resnet${BASH_REMATCH[1]}_sn_8x${BASH_REMATCH[2]}.pth"
      found=1
      echo "== $path -> $out"
      "${PYTHON:-python}" "$root/tools/convert_sn_to_d2.py" --ckpt "$path" --dst "$out"
      break
    fi
  done
done
if [[ $found == 0 ]]; then
  echo "error: no published SN model in $src (expected names like 'ResNet50v1+SN(8,32)-77.49.pth' or resnet50_sn_8x1.pth)" >&2
  exit 2
fi
