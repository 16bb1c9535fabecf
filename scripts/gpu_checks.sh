#!/usr/bin/env bash
# Every check that needs a GPU, in one command that fits one device call (~7 minutes on an
# H100/H200): the project's GPU machine is lent for 15 minutes a session, start included,
# so this is prepared and tested here and run there as it is.
#
# Usage, there (repository root, .gpu_carry carried; see scripts/gpu_carry.sh):
#   bash scripts/gpu_checks.sh            # logs and results under $OUT (default /tmp/sn_gpu)
#
# In order of what matters if time runs out:
#   1. env.txt     GPU, driver, Python/torch/triton versions
#   2. tests.log   the Triton kernel tests on CUDA tensors (float64 reference, CUDA-graph
#                  capture) and the SN layer tests (CUDA paths included)
#   3. bench.md    tools/benchmark_sn.py --device cuda: layers vs cuDNN BN and GN (fp32,
#                  AMP), and the Mask R-CNN R50-FPN step with FrozenBN/BN/GN/SN; bench.log
#   4. host.log    benchmarks/triton_host_time.py --device cuda: sn_det's own host time per
#                  SN step (kernels stubbed out) beside GroupNorm's whole step
#   5. seg.log     the SNSegmentation README command with MODEL.DEVICE cuda (mIoU)
#   6. study.log   projects/NormStudy/study.py --device cuda at its tiny size (SN and SSN
#                  at 1 and 8 images), study.md its table
#   7. compiled.md tools/benchmark_sn.py --device cuda --compiled --skip-model: sn_det's
#                  Triton kernels against inductor's (SN under torch.compile) at three
#                  shapes; compiled.log
# The benchmark rewrites its table after each part, so a step cut short keeps what it finished.
# Each step has its own time limit (GPU_CHECK_LIMITS="tests bench host seg study compiled"
# seconds, default 120 240 40 100 90 240), cut to what is left of GPU_CHECK_TOTAL (default
# 570 s, inside one 600 s device call; a step with under 30 s left is skipped), and a failing
# step does not stop the next; GPU_CHECK_STEPS="tests bench" runs a subset (e.g. to split
# the checks over two calls). The exit status is the number of failed or skipped steps.
set -uo pipefail
cd "$(dirname "$0")/.."

out=${OUT:-/tmp/sn_gpu}
mkdir -p "$out"
python=${PYTHON:-python3}
read -r limit_tests limit_bench limit_host limit_seg limit_study limit_compiled \
  <<<"${GPU_CHECK_LIMITS:-120 240 40 100 90 240}"
total=${GPU_CHECK_TOTAL:-570}
steps=" ${GPU_CHECK_STEPS:-tests bench host seg study compiled} "
if [[ -d .gpu_carry/site ]]; then
  export PYTHONPATH="$PWD/.gpu_carry/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
failed=0
start=$SECONDS

step() {  # step NAME LIMIT LOG COMMAND...: run with a time limit, log, report
  local name=$1 limit=$2 log=$3
  shift 3
  [[ "$steps" == *" $name "* ]] || return 0
  local left=$((total - (SECONDS - start)))
  ((limit <= left)) || limit=$left
  if ((limit < 30)); then
    echo "[gpu-checks] $name: skipped, ${left}s left of ${total}s"
    failed=$((failed + 1))
    return 0
  fi
  echo "[gpu-checks] $name (limit ${limit}s) at $((SECONDS - start))s"
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  local rc=$?
  echo "[gpu-checks] $name: exit $rc after $((SECONDS - start))s; last lines:"
  tail -n 4 "$log" | sed 's/^/    /'
  ((rc == 0)) || failed=$((failed + 1))
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$python" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "available", torch.cuda.is_available())
try:
    import triton; print("triton", triton.__version__)
except ImportError as e:
    print("no triton:", e)
import detectron2, sn_det; print("detectron2", detectron2.__version__, "from", detectron2.__file__)
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"
if ! "$python" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "[gpu-checks] error: no CUDA GPU visible to $python; nothing here would test the GPU"
  exit 99
fi

# -n: pytest-xdist (on the GPU machine) compiles the Triton variants on several cores.
xdist=()
"$python" -c "import xdist" 2>/dev/null && xdist=(-n 8)
# sn_det's compiled CPU kernels are not built there (no GPU check needs them; CI checks that
# they build), so the test that asserts they are is left out.
step tests "$limit_tests" "$out/tests.log" "$python" -m pytest -q -p no:cacheprovider \
  "${xdist[@]}" tests/test_switch_norm_triton.py tests/test_switchable_norm.py \
  --deselect tests/test_switchable_norm.py::test_compiled_cpu_kernels_are_built
step bench "$limit_bench" "$out/bench.log" "$python" tools/benchmark_sn.py --device cuda \
  --out "$out/bench.md"
step host "$limit_host" "$out/host.log" "$python" benchmarks/triton_host_time.py --device cuda
step seg "$limit_seg" "$out/seg.log" "$python" projects/SNSegmentation/train_net.py \
  --config-file projects/SNSegmentation/configs/quick_schedules/deeplab_v3plus_R_50_sn_synth_demo.yaml \
  MODEL.DEVICE cuda OUTPUT_DIR /tmp/sn_gpu_seg
[[ -f "$out/seg.log" ]] && grep -h "mIoU" "$out/seg.log" | tail -n 2
step study "$limit_study" "$out/study.log" "$python" projects/NormStudy/study.py --device cuda \
  --size tiny --norms SN,SSN --ims-per-process 1,8 --output /tmp/sn_gpu_study
[[ -f /tmp/sn_gpu_study/results.md ]] && cp /tmp/sn_gpu_study/results.md "$out/study.md"
# Three of the eight shapes (a large FPN level, a deep stage, the ROI heads): inductor compiles
# every shape anew, and this step runs last, on what is left of the total.
step compiled "$limit_compiled" "$out/compiled.log" "$python" tools/benchmark_sn.py \
  --device cuda --compiled --skip-model --rounds 11 \
  --shapes 2x256x200x304 2x1024x50x76 1024x256x7x7 --out "$out/compiled.md"
echo "[gpu-checks] done in $((SECONDS - start))s, $failed failed or skipped step(s); files in $out:"
ls "$out"
exit "$failed"
