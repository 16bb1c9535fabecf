#!/usr/bin/env python
"""Host time of SN's Triton path: the Python work around the eight kernel launches.

At small maps a GPU finishes each kernel in microseconds, so a layer step is paced by the host:
sn_det's own Python (allocations, argument lists, autograd) plus Triton's launcher. This
script times the first part alone: every kernel launch of sn_det/layers/switch_norm_triton.py
is replaced by a no-op, and SwitchNormTritonFunction's forward + backward runs back to back
(the results are garbage; only the time counts). On CPU tensors it needs no GPU and no
TRITON_INTERPRET (CPU allocations are cheaper than CUDA ones, and CPU tensors add four small
copies the interpreter needs, so the absolute figure differs from a GPU host's).

Baseline in the same run, interleaved: torch's GroupNorm(32) forward + backward at the same
shape on the same device (its whole step, kernels included; on a GPU at this shape that is
also almost all host time). On a GPU the real SN step is timed too, so that the rest of the
host pace (Triton's launcher, and kernels that outlast the host) is the difference of the
two SN rows. With --against, a second copy of switch_norm_triton.py is timed too,
interleaved, for A/B comparisons of a change:

  git show HEAD~1:sn_det/layers/switch_norm_triton.py > /tmp/old_snt.py
  .venv/bin/python benchmarks/triton_host_time.py --against /tmp/old_snt.py
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout's sn_det, whether or not it is installed (the GPU machine runs it from here);
# bench_cli beside this.
sys.path[:0] = [os.path.dirname(HERE), HERE]

from bench_cli import Parser, parse_shape, print_medians, rotated  # noqa: E402


class _NoLaunch:
    """Stands in for a @triton.jit kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def load_stubbed(path, name):
    """switch_norm_triton.py from ``path`` as module ``name``, every kernel a no-op."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for attr in dir(module):
        if attr.endswith("_kernel"):
            setattr(module, attr, _NoLaunch())
    return module


def main(argv=None):
    """Run the timing; ``argv``: the arguments (default: the command line's)."""
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="2x256x8x8", help="NxCxHxW (default 2x256x8x8)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=50, help="back-to-back steps per round")
    parser.add_argument("--against", help="another switch_norm_triton.py to time (A/B)")
    args = parser.parse_args(argv)
    shape = parse_shape(parser, args.shape, channels_multiple=32)  # GroupNorm(32)
    if args.rounds < 3 or args.steps < 1:
        parser.error("--rounds must be at least 3 and --steps at least 1")
    if args.against and not os.path.isfile(args.against):
        parser.error(f"--against {args.against}: no such file")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device!r} is not a device (cpu, cuda, cuda:N)")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: this timing runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but no CUDA GPU is available")
    try:
        import triton  # noqa: F401  (switch_norm_triton needs it)

        import sn_det.layers  # noqa: F401
    except ImportError as e:
        sys.exit(f"error: {e}; run this with the project's .venv (torch's wheels bring triton)")

    current = os.path.join(HERE, "..", "sn_det", "layers", "switch_norm_triton.py")
    paths = {"SN (this checkout), kernels stubbed": current}
    if args.against:
        paths["SN (--against), kernels stubbed"] = args.against
    functions = {}
    for i, (k, path) in enumerate(paths.items()):
        try:
            functions[k] = load_stubbed(path, f"_snt_{i}").SwitchNormTritonFunction
        except Exception as e:  # a file that is not a switch_norm_triton.py: say which
            parser.error(f"{path} does not load as switch_norm_triton.py ({type(e).__name__}: {e})")
    if device.type == "cuda":  # the whole host pace: sn_det's part, Triton's launcher, kernels
        from sn_det.layers.switch_norm_triton import SwitchNormTritonFunction

        functions["SN (this checkout), real kernels"] = SwitchNormTritonFunction
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # host work is single-threaded; keep the baseline so too
    try:
        _time(functions, paths, shape, device, args)
    finally:  # main() also runs inside other programs (the tests)
        torch.set_num_threads(threads)


def _time(functions, paths, shape, device, args):
    from sn_det.layers import SwitchNorm2d

    layer = SwitchNorm2d(shape[1]).to(device)
    gn = torch.nn.GroupNorm(32, shape[1]).to(device)
    x = torch.randn(shape, device=device, requires_grad=True)
    dy = torch.randn_like(x)
    params = (layer.weight, layer.bias, layer.mean_weight, layer.var_weight)

    def sn_step(fn):
        return lambda: fn.apply(x, *params, layer, True).backward(dy)

    steps = {k: sn_step(f) for k, f in functions.items()}
    steps["GroupNorm(32), whole step"] = lambda: gn(x).backward(dy)
    times = {k: [] for k in steps}
    items = list(steps.items())
    for r in range(args.rounds + 2):  # two warm-up rounds
        for k, step in rotated(items, r):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(args.steps):
                x.grad = None
                layer.zero_grad(set_to_none=True)
                gn.zero_grad(set_to_none=True)
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= 2:
                times[k].append((time.perf_counter() - t) / args.steps * 1e6)
    print(f"shape {shape} on {device}, torch {torch.__version__}; medians of {args.rounds} "
          f"interleaved rounds of {args.steps} steps")  # fmt: skip
    print_medians(times, "GroupNorm(32), whole step", "step")
    if args.against:
        a, b = (statistics.median(times[k]) for k in paths)
        print(f"this checkout / --against: {a / b:.2f}")


if __name__ == "__main__":
    main()
