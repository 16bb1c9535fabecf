#!/usr/bin/env bash
# Fine-tune an SN detector from an ImageNet SN model (the seed's train_finetune.sh); convert
# the published model first (scripts/convert.sh) to the recipe's MODEL.WEIGHTS path.
# Usage: scripts/train_finetune.sh [CONFIG] [KEY VALUE ...]
#   CONFIG  default configs/sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml
#   NUM_GPUS=8 (environment) processes; KEY VALUE pairs override the config.
# Resume an interrupted run: RESUME=1 scripts/train_finetune.sh CONFIG
# PYTHON (environment): the interpreter with sn_det installed, default `python`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)  # paths given by the caller stay relative to $PWD
config=${1:-$root/configs/sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml}
shift $(( $# > 0 ? 1 : 0 ))
resume=()
if [[ "${RESUME:-0}" == 1 ]]; then resume=(--resume); fi
exec "${PYTHON:-python}" "$root/tools/train_net.py" --num-gpus "${NUM_GPUS:-8}" "${resume[@]}" --config-file "$config" "$@"
