"""Whether Triton's interpreter can run sn_det's kernels in this environment.

Triton's interpreter up to 3.6 turns a scalar kernel argument used as a loop bound into a
Python int with ``int(array)`` on a 1-element array, which NumPy 2.4 made an error
(triton-lang/triton#9171, fixed in later Triton). With such a pair every interpreted
kernel fails before computing anything; the tests then skip and say why instead of failing
43 times over an environment problem. Triton 2.3 (pinned, NumPy < 2), 3.8 and 3.9 are fine."""

import functools

import pytest
import torch

try:  # module globals: Triton 2.3's interpreter looks for triton.language there
    import triton
    import triton.language as tl
except ImportError:  # the callers skip first
    triton = tl = None


@functools.lru_cache(maxsize=None)
def interpreter_problem():
    """None, or one sentence on why the interpreter cannot run the kernels here."""
    if torch.cuda.is_available():
        return None  # the kernels run compiled on the GPU
    import numpy

    @triton.jit
    def _count(out_ptr, n):
        total = tl.zeros([1], dtype=tl.float32)
        for _ in range(0, n):  # a runtime loop bound, as in the plane passes
            total += 1
        tl.store(out_ptr + tl.arange(0, 1), total)

    out = torch.zeros(1)
    try:
        _count[(1,)](out, 3)
    except Exception as e:  # noqa: BLE001  (the interpreter wraps the cause in its own error)
        if "0-dimensional" in str(e):
            return (
                f"Triton {triton.__version__}'s interpreter cannot run with NumPy "
                f"{numpy.__version__} (triton-lang/triton#9171): use NumPy < 2.4 or a newer Triton"
            )
        raise
    assert out.item() == 3, out
    return None


def skip_if_interpreter_broken():
    reason = interpreter_problem()
    if reason:
        pytest.skip(reason)
