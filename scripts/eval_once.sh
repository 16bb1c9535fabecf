#!/usr/bin/env bash
# Evaluate one checkpoint on the config's DATASETS.TEST (the seed's eval_once.sh).
# Usage: scripts/eval_once.sh CONFIG CHECKPOINT [KEY VALUE ...]
#   NUM_GPUS=1 (environment) processes. Add TEST.SN_BATCH_AVG.ENABLED True to evaluate with
#   batch-average SN statistics.
# PYTHON (environment): the interpreter with sn_det installed, default `python`.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: scripts/eval_once.sh CONFIG CHECKPOINT [KEY VALUE ...]" >&2
  exit 2
fi
config=$1 ckpt=$2
shift 2
root=$(cd "$(dirname "$0")/.." && pwd)  # paths given by the caller stay relative to $PWD
exec "${PYTHON:-python}" "$root/tools/train_net.py" --num-gpus "${NUM_GPUS:-1}" --eval-only --config-file "$config" MODEL.WEIGHTS "$ckpt" "$@"
