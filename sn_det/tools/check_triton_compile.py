"""Compile every Triton kernel of SN for real GPU architectures, on a machine without a GPU.

The suite checks what the kernels compute under the Triton interpreter; this checks that
Triton's GPU compiler accepts them, for each specialization a training run would ask for,
and what they cost in registers, spilled (local) memory and shared memory.

It drives SwitchNorm2d and Sparse SN's SparseSwitchNorm2d forward and backward on CPU tensors
that are allocated but never touched, with the launches turned into compilations for
``sm_<arch>`` (sn_det/layers/triton_aot.py), over:

- modes: training (moving average), training with batch-average statistics, no BN term,
  eval, frozen;
- float32, float16 and bfloat16 input (bfloat16 from sm_80: older GPUs take SN's torch-ops
  path for it), contiguous and channels_last;
- the R50-FPN Mask R-CNN shapes of the GPU benchmark, and odd shapes (sizes that are not
  multiples of a tile, H*W = 1, one sample).

The plane passes are split for the arch's number of SMs, as on that GPU.

Prints progress, a table per arch (specializations, largest registers/local/shared per
kernel, compile seconds), one ``error:`` line per specialization that failed, and exits 1
if any failed (2 on bad arguments).

Examples:
  python -m sn_det.tools.check_triton_compile                  # sm_90 (H100/H200)
  python -m sn_det.tools.check_triton_compile --arch 75,80,90  # ~5 min per arch, 2 cores
  python -m sn_det.tools.check_triton_compile --quick          # fewer shapes; the suite's
"""

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import defaultdict
from unittest import mock

import torch

# Streaming multiprocessors of one GPU of each arch (T4, A100, A40, L40, H100 SXM): the plane
# passes aim at 4 programs per SM, which sets how they split (other archs: 108).
SMS = {75: 40, 80: 108, 86: 84, 89: 142, 90: 132}

# Not multiples of any tile; H*W = 1; one sample; W = 1; a single channel.
ODD_SHAPES = [(3, 5, 7, 9), (2, 33, 17, 1), (1, 300, 1, 1), (1, 1, 13, 11), (5, 2048, 3, 3)]
QUICK_SHAPES = [(2, 256, 200, 304), (1024, 256, 7, 7), (3, 5, 7, 9), (1, 300, 1, 1)]

MODES = ("train", "batch_average", "no_bn", "eval", "frozen")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _refuse(message):
    """Bad input: one sentence on stderr, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse_archs(text):
    """ "80,90" -> [80, 90]; refuses what Triton cannot compile for."""
    try:
        archs = [int(a) for a in text.split(",") if a.strip()]
    except ValueError:
        _refuse(f"--arch takes compute capabilities as numbers like 80,90, not {text!r}.")
    if not archs or any(a < 75 for a in archs):
        _refuse(f"--arch {text}: Triton compiles for sm_75 and newer (for example 75,80,86,89,90).")
    return archs


def _layers():
    """(name, layer class) of the layers whose Triton paths differ: softmax switch weights
    (SwitchNorm2d) and switch probabilities (Sparse SN, PROBS=True in the kernels)."""
    from sn_det.layers import SwitchNorm2d
    from sn_det.projects.sparse_sn.layers import SparseSwitchNorm2d

    return [("SwitchNorm2d", SwitchNorm2d), ("SparseSwitchNorm2d", SparseSwitchNorm2d)]


def _make(cls, c, mode):
    layer = cls(c, using_moving_average=mode != "batch_average", using_bn=mode != "no_bn")
    layer.train(mode != "eval")
    if mode == "frozen":
        layer.freeze()
    return layer


def cases(quick, arch):
    """Every (layer name, class, mode, dtype name, channels_last, shape) to drive for
    ``sm_<arch>``: the dtypes the layers send to the kernels on that GPU."""
    from sn_det.layers.switch_norm_triton import dtype_supported
    from sn_det.tools.benchmark_sn import CUDA_SHAPES  # the R50-FPN shapes the GPU benchmark times

    shapes = QUICK_SHAPES if quick else CUDA_SHAPES + ODD_SHAPES
    for name, cls in _layers():
        modes = ("train",) if quick and name != "SwitchNorm2d" else MODES
        for mode in modes:
            for dtype in DTYPES:
                if not dtype_supported(DTYPES[dtype], divmod(arch, 10)):
                    continue
                for channels_last in (False, True):
                    for shape in shapes:
                        yield name, cls, mode, dtype, channels_last, shape


def drive(cls, mode, dtype, channels_last, shape):
    """One forward and backward of the layer; with compile_only active nothing is computed."""
    layer = _make(cls, shape[1], mode)
    # Allocated, never initialised or read: pages of large shapes are never touched.
    x = torch.empty(shape, dtype=DTYPES[dtype])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    y = layer(x)
    y.backward(torch.empty_like(y))


def check(arch, quick, log=print):
    """Compile every case for ``sm_<arch>``; returns the CompileRecords."""
    from sn_det.layers import switch_norm_triton, switchable_norm
    from sn_det.layers.triton_aot import compile_only

    records = []
    all_cases = list(cases(quick, arch))
    # CPU tensors to the Triton launchers, whose plane passes split as on a GPU of this arch.
    programs = switch_norm_triton._PROGRAMS_PER_SM * SMS.get(arch, 108)
    start = time.perf_counter()
    with mock.patch.object(switchable_norm, "TRITON_ON_CPU", True), mock.patch.object(
        switch_norm_triton, "INTERPRETER_TARGET_PROGRAMS", programs
    ), compile_only(arch, records):
        for i, (name, cls, mode, dtype, cl, shape) in enumerate(all_cases, 1):
            drive(cls, mode, dtype, cl, shape)
            if i % 50 == 0 or i == len(all_cases):
                log(
                    f"[sm_{arch}] {i}/{len(all_cases)} cases, {len(records)} specializations"
                    f" compiled, {time.perf_counter() - start:.0f} s"
                )
    return records


def table(records):
    """Markdown rows per (arch, kernel): the largest resources over its specializations."""
    groups = defaultdict(list)
    for r in records:
        groups[(r.arch, r.kernel)].append(r)

    def top(rs, field):
        values = [getattr(r, field) for r in rs if getattr(r, field) is not None]
        return str(max(values)) if values else "?"

    lines = [
        "| arch | kernel | specializations | failed | max registers | max spill bytes"
        " | max stack bytes | max shared bytes | compile s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, kernel), rs in sorted(groups.items()):
        ok = [r for r in rs if r.error is None]
        lines.append(
            f"| sm_{arch} | {kernel} | {len(rs)} | {len(rs) - len(ok)} | {top(ok, 'registers')}"
            f" | {top(ok, 'spill_bytes')} | {top(ok, 'stack_bytes')} | {top(ok, 'shared_bytes')}"
            f" | {sum(r.seconds for r in rs):.1f} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch",
        default="90",
        help="comma-separated compute capabilities as numbers (default 90: H100/H200)",
    )
    parser.add_argument("--quick", action="store_true", help="4 shapes; Sparse SN in training only")
    parser.add_argument("--json", help="also write every compilation record to this file")
    args = parser.parse_args(argv)
    archs = _parse_archs(args.arch)
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        _refuse(f"--json {args.json}: its folder does not exist.")
    if args.json and os.path.isdir(args.json):
        _refuse(f"--json {args.json} is a folder; give a file name.")

    # The interpreter replaces @triton.jit kernels at import with Python ones; compiling needs
    # the real ones, so it must be off before the kernels are imported.
    os.environ.pop("TRITON_INTERPRET", None)
    try:
        import triton
    except ImportError:
        _refuse("triton is not installed; it comes with torch's CUDA wheels on Linux.")
    from triton.runtime.jit import JITFunction

    from sn_det.layers import switch_norm_triton

    if not isinstance(switch_norm_triton._affine_kernel, JITFunction):
        # Imported under TRITON_INTERPRET=1 before this module could turn it off.
        _refuse("the Triton kernels were imported under TRITON_INTERPRET=1; unset it.")
    print(f"triton {triton.__version__}, torch {torch.__version__}; no GPU is used")
    records = []
    for arch in archs:
        records += check(arch, args.quick)
    if args.json:
        # Written whole or not at all.
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump([dataclasses.asdict(r) for r in records], f, indent=1)
        os.replace(tmp, args.json)
    failed = [r for r in records if r.error]
    print()
    print(table(records))
    print()
    for r in failed:
        print(f"error: {r.kernel} for sm_{r.arch} ({r.key}): {r.error}")
    spills = [r for r in records if r.spill_bytes]
    print(
        f"{len(records)} specializations compiled, {len(failed)} failed;"
        f" {len(spills)} spill registers to local memory."
    )
    if any(r.registers is None for r in records if not r.error):
        print("note: ptxas printed no resource report for some kernels ('?').")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
