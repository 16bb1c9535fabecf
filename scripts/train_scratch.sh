#!/usr/bin/env bash
# Train an SN detector from scratch (the seed's train_scratch.sh).
# Usage: scripts/train_scratch.sh [CONFIG] [KEY VALUE ...]
#   CONFIG  default configs/sn_baselines/scratch_mask_rcnn_R_50_FPN_3x_sn.yaml
#   NUM_GPUS=8 (environment) processes; KEY VALUE pairs override the config.
# Example: NUM_GPUS=2 scripts/train_scratch.sh configs/sn_baselines/scratch_faster_rcnn_R_50_FPN_3x_sn.yaml OUTPUT_DIR output/scratch_fpn
# PYTHON (environment): the interpreter with sn_det installed, default `python`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)  # paths given by the caller stay relative to $PWD
config=${1:-$root/configs/sn_baselines/scratch_mask_rcnn_R_50_FPN_3x_sn.yaml}
shift $(( $# > 0 ? 1 : 0 ))
exec "${PYTHON:-python}" "$root/tools/train_net.py" --num-gpus "${NUM_GPUS:-8}" --config-file "$config" "$@"
