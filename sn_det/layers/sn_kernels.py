"""The four passes of SN over N*C*H*W data, on sn_det's compiled CPU kernels where they
apply (CPU float32/float64) and on plain torch ops elsewhere (CUDA, other dtypes, or a build
without the extension).

Shapes: x, dy, y, dx are (N, C, H, W); per-plane tensors are (N, C).
"""

import logging
from typing import Tuple

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

try:
    from sn_det import _C  # built by setup.py (pip install --no-build-isolation -e .)
except ImportError as e:  # pragma: no cover - depends on the install
    _C = None
    logger.warning(f"sn_det's CPU kernels are not built ({e}); SN uses slower torch ops on CPU.")

__all__ = [
    "has_cpu_kernels",
    "on_cpu_kernels",
    "plane_moments",
    "affine",
    "backward_reduce",
    "backward_dx",
]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def has_cpu_kernels() -> bool:
    """Whether the compiled CPU kernels are available."""
    return _C is not None


def on_cpu_kernels(*ts: Tensor) -> bool:
    """Whether the compiled CPU kernels apply to all of these tensors."""
    # Tracing cannot record a pybind call (it would bake its result in as a constant).
    # (torch._C._is_tracing is what torch.jit.is_tracing returns outside TorchScript; this
    # check runs ~8 times per SN call, so the cheap forms matter at small shapes.)
    if _C is None or torch._C._is_tracing():
        return False
    for t in ts:
        if not t.is_cpu or t.dtype not in _KERNEL_DTYPES:
            return False
    return True


def plane_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-plane mean and unbiased variance, (N, C) each; a 1-element plane has variance 0."""
    n, c, h, w = x.shape
    if x.numel() == 0:  # no planes (N == 0) or empty planes: nothing to reduce, no warning
        return x.new_zeros((n, c)), x.new_zeros((n, c))
    if on_cpu_kernels(x):
        return tuple(_C.moments(x.contiguous()))
    var, mean = torch.var_mean(x.reshape(n, c, h * w), dim=2, correction=1 if h * w > 1 else 0)
    return mean, var


def affine(x: Tensor, center: Tensor, scale: Tensor, bias: Tensor) -> Tensor:
    """y = (x - center) * scale + bias with (N, C) center/scale and (C,) bias broadcast over
    each plane. Subtracting the center (the mixed mean) before scaling keeps the output exact
    for data far from zero, where x * scale + (bias - center * scale) would cancel."""
    if on_cpu_kernels(x) and x.numel() > 0 and scale.dtype == x.dtype == bias.dtype:
        # Returns a fresh 4-d tensor, never a view: callers apply relu_ to it in place.
        return _C.affine(x.contiguous(), center.contiguous(), scale.contiguous(), bias.contiguous())
    y = (x - center[:, :, None, None]).mul_(scale[:, :, None, None])
    return y.add_(bias[None, :, None, None])


def backward_reduce(dy: Tensor, x: Tensor, center: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-plane sum(dy) and sum(dy * (x - center)), (N, C) each (center: (N, C), the plane
    means, so the second sum carries no cancelling offset)."""
    n, c, h, w = x.shape
    if on_cpu_kernels(dy, x) and x.numel() > 0 and dy.dtype == x.dtype == center.dtype:
        return tuple(_C.backward_reduce(dy.contiguous(), x.contiguous(), center.contiguous()))
    dy3 = dy.reshape(n, c, h * w)
    xc = (x.reshape(n, c, h * w) - center[:, :, None]).unsqueeze(3)
    # Batched per-plane dot product: no second N*C*L temporary as (dy3 * xc).sum(2) would make.
    return dy3.sum(2), torch.matmul(dy3.unsqueeze(2), xc).view(n, c)


def backward_dx(dy: Tensor, x: Tensor, center: Tensor, s: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """dx = dy * s + (x - center) * a + b with (N, C) coefficients broadcast over each plane."""
    if on_cpu_kernels(dy, x) and x.numel() > 0 and dy.dtype == x.dtype == s.dtype:
        return _C.backward_dx(
            dy.contiguous(),
            x.contiguous(),
            center.contiguous(),
            s.contiguous(),
            a.contiguous(),
            b.contiguous(),
        )
    dx = (x - center[:, :, None, None]).mul_(a[:, :, None, None]).add_(b[:, :, None, None])
    return dx.addcmul_(dy, s[:, :, None, None])
