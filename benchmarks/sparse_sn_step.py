#!/usr/bin/env python
"""Layer step of Sparse SN against SN on the CPU, with each sparsestmax implementation.

A training step of one layer (forward + backward, gradients set to None before each, as
after an optimizer's zero_grad), timed back to back in interleaved rounds: SN, Sparse SN with
sparsestmax on the host (what CPU tensors take), and Sparse SN with the torch-ops sparsestmax
(what GPU tensors take; on the CPU, ~40 tiny autograd ops per call). Medians and ratios to SN
from the same run.

  .venv/bin/python benchmarks/sparse_sn_step.py                 # (2, 256, 8, 8)
  .venv/bin/python benchmarks/sparse_sn_step.py --shape 2x256x50x50
"""

import argparse
import importlib
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout's sn_det and projects, whether or not it is installed; bench_cli beside this.
sys.path[:0] = [os.path.dirname(HERE), HERE]

from bench_cli import Parser, parse_shape, print_medians, rotated  # noqa: E402


def main(argv=None):
    """Run the timing; ``argv``: the arguments (default: the command line's)."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2x256x8x8", help="NxCxHxW (default 2x256x8x8)")
    parser.add_argument("--rounds", type=int, default=21, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=50, help="back-to-back steps per round")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)
    shape = parse_shape(parser, args.shape)
    if args.rounds < 3 or args.steps < 1 or args.threads < 1:
        parser.error("--rounds must be at least 3, --steps and --threads at least 1")

    from sn_det.layers import SwitchNorm2d
    from sn_det.projects.sparse_sn import SparseSwitchNorm2d

    impl = importlib.import_module("sn_det.projects.sparse_sn.sparsestmax")
    layers = {"SN": SwitchNorm2d(shape[1]), "Sparse SN": SparseSwitchNorm2d(shape[1])}
    ssn = layers["Sparse SN"]
    with torch.no_grad():  # mid-schedule, logits apart: the radial push is taken
        ssn.radius.fill_(0.3)
        ssn.mean_weight.copy_(torch.tensor([1.0, 0.9, 0.7]))
        ssn.var_weight.copy_(torch.tensor([0.6, 1.0, 0.7]))
    x = torch.randn(shape, requires_grad=True)
    dy = torch.randn(shape)
    runs = {  # name: (layer, sparsestmax on the host)
        "SN": (layers["SN"], True),
        "Sparse SN, sparsestmax on the host": (layers["Sparse SN"], True),
        "Sparse SN, sparsestmax in torch ops": (layers["Sparse SN"], False),
    }
    threads, host = torch.get_num_threads(), impl.HOST_ON_CPU
    torch.set_num_threads(args.threads)
    times = {k: [] for k in runs}
    try:
        items = list(runs.items())
        for r in range(args.rounds + 2):  # two warm-up rounds
            for name, (m, on_host) in rotated(items, r):
                impl.HOST_ON_CPU = on_host
                t = time.perf_counter()
                for _ in range(args.steps):
                    x.grad = None
                    m.zero_grad(set_to_none=True)
                    m(x).backward(dy)
                if r >= 2:
                    times[name].append((time.perf_counter() - t) / args.steps * 1e6)
    finally:  # main() also runs inside other programs (the tests)
        torch.set_num_threads(threads)
        impl.HOST_ON_CPU = host
    print(f"shape {shape}, {args.threads} threads, torch {torch.__version__}; medians of "
          f"{args.rounds} interleaved rounds of {args.steps} steps")  # fmt: skip
    print_medians(times, "SN", "layer step")


if __name__ == "__main__":
    main()
