#!/usr/bin/env bash
# Evaluate every checkpoint of a (running) training as it is written (the seed's
# eval_continuous.sh with --load_dir). Results: DIR/continuous_eval.jsonl and TensorBoard
# events in DIR/continuous_eval/.
# Usage: scripts/eval_continuous.sh CONFIG DIR [TIMEOUT_SECONDS] [KEY VALUE ...]
#   Stops after model_final.pth, or after TIMEOUT_SECONDS without a new checkpoint.
# PYTHON (environment): the interpreter with sn_det installed, default `python`.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: scripts/eval_continuous.sh CONFIG DIR [TIMEOUT_SECONDS] [KEY VALUE ...]" >&2
  exit 2
fi
config=$1 dir=$2
shift 2
timeout=()
if [[ $# -gt 0 && $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; then timeout=(--timeout "$1"); shift; fi
root=$(cd "$(dirname "$0")/.." && pwd)  # paths given by the caller stay relative to $PWD
exec "${PYTHON:-python}" "$root/tools/eval_continuous.py" --config-file "$config" --load-dir "$dir" "${timeout[@]}" "$@"
