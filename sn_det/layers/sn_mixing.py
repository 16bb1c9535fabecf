"""The (N, C)-sized half of SN: mixing IN/LN/BN moments into a per-plane mean and scale,
and its analytic backward.

Everything here works on per-plane moments, never on the feature map, so it costs O(N*C).
It is written out by hand (rather than recorded by autograd on every call) because autograd's
per-op bookkeeping on these tiny tensors used to cost more than the N*C*H*W passes
themselves at detection shapes. On CPU both directions run as one compiled call each
(csrc/switch_norm_mix_cpu.cpp, the same math); these torch-op versions serve CUDA and
builds without the extension. The tests check both against a plain float64 autograd
reference and with gradcheck.

Notation (all (N, C) unless noted): m = mean_in, v = var_in, pm/pv = softmax of the
mean/var logits (K,), mu/sig = the mixed mean/variance, r = 1/sqrt(sig + eps),
scale = weight * r, so y = (x - mu) * scale + bias.

Stability: the LN/BN variances are mean(v) + mean((m - pooled mean)^2), equal in exact
arithmetic to the published mean(v + m^2) - pooled mean^2 but a sum of non-negative terms
that does not cancel when |mean| >> std; the backward uses the same centred differences.
"""

from typing import NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from . import sn_kernels

__all__ = [
    "Mixed",
    "batch_moments",
    "batch_moments_ops",
    "mix_forward",
    "mix_ops",
    "mix_backward",
    "bn_backward",
    "dx_coefficients",
]


class Mixed(NamedTuple):
    """Result of :func:`mix_forward`: what the large passes need, and what backward reuses."""

    scale: Tensor  # (N, C)
    mean_in: Tensor  # (N, C)
    var_in: Tensor  # (N, C)
    mean_ln: Tensor  # (N, 1)
    var_ln: Tensor  # (N, 1)
    mean_bn: Optional[Tensor]  # (1, C), or None without a BN term
    var_bn: Optional[Tensor]
    pm: Tensor  # (K,)
    pv: Tensor
    mean: Tensor  # (N, C) mixed mean
    rstd: Tensor  # (N, C)
    weight: Tensor  # (C,)
    bias: Tensor  # (C,)
    probs: bool  # mean/var weights were the mixing probabilities, not logits


def batch_moments(mean_in: Tensor, var_in: Tensor) -> Tuple[Tensor, Tensor]:
    """BN-term moments of one batch from its (N, C) instance moments, N > 0:
    mean_bn = mean_n m and var_bn = mean_n v + mean_n (m - mean_bn)^2, each (1, C)."""
    if sn_kernels.on_cpu_kernels(mean_in, var_in):
        return tuple(sn_kernels._C.batch_moments(mean_in.contiguous(), var_in.contiguous()))
    return batch_moments_ops(mean_in, var_in)


# The two functions below are plain torch ops, TorchScript-compatible: the torch-ops path
# of batch_moments/mix_forward, and the scripted SwitchNorm2d (switchable_norm.py), use them.
def batch_moments_ops(mean_in: Tensor, var_in: Tensor) -> Tuple[Tensor, Tensor]:
    """:func:`batch_moments` in torch ops."""
    mean_bn = mean_in.mean(0, keepdim=True)
    spread = (mean_in - mean_bn).pow(2).mean(0, keepdim=True)
    return mean_bn, var_in.mean(0, keepdim=True) + spread


def mix_ops(
    mean_in: Tensor,
    var_in: Tensor,
    weight: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    eps: float,
    mean_bn: Optional[Tensor],
    var_bn: Optional[Tensor],
    probs: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`mix_forward` in torch ops: (scale, mean, rstd, mean_ln, var_ln, pm, pv)."""
    mean_ln = mean_in.mean(1, keepdim=True)
    var_ln = var_in.mean(1, keepdim=True) + (mean_in - mean_ln).pow(2).mean(1, keepdim=True)
    pm = mean_weight if probs else torch.softmax(mean_weight, 0)
    pv = var_weight if probs else torch.softmax(var_weight, 0)
    mean = pm[0] * mean_in + pm[1] * mean_ln
    var = pv[0] * var_in + pv[1] * var_ln
    if mean_bn is not None and var_bn is not None:
        mean = mean + pm[2] * mean_bn
        var = var + pv[2] * var_bn
    rstd = torch.rsqrt(var + eps)
    return rstd * weight, mean, rstd, mean_ln, var_ln, pm, pv


def mix_forward(
    mean_in: Tensor,
    var_in: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean_weight: Tensor,
    var_weight: Tensor,
    eps: float,
    bn_moments: Optional[Tuple[Tensor, Tensor]] = None,
    probs: bool = False,
) -> Mixed:
    """Mix the moments into the per-plane mean mu and scale = weight / sqrt(sig + eps).

    Args:
        mean_in, var_in: (N, C) per-plane mean and unbiased variance.
        weight, bias: (C,). mean_weight, var_weight: (K,) logits, K = 3 with a BN term.
        bn_moments: the BN term's (mean, var), each (1, C): batch moments or running
            statistics; None when the layer has no BN term (K = 2).
        probs: mean_weight/var_weight are the mixing probabilities themselves (Sparse SN's
            sparsestmax outputs); :func:`mix_backward` then returns their gradients.
    """
    mean_bn, var_bn = bn_moments if bn_moments is not None else (None, None)
    small = (mean_in, var_in, weight, bias, mean_weight, var_weight)
    if sn_kernels.on_cpu_kernels(*small) and (mean_bn is None or mean_bn.dtype == mean_in.dtype):
        empty = mean_in.new_empty(0)
        scale, mean, rstd, mean_ln, var_ln, pm, pv = sn_kernels._C.mix_forward(
            mean_in.contiguous(),
            var_in.contiguous(),
            weight.contiguous(),
            mean_weight.contiguous(),
            var_weight.contiguous(),
            eps,
            empty if mean_bn is None else mean_bn.contiguous(),
            empty if var_bn is None else var_bn.contiguous(),
            probs,
        )
    else:
        scale, mean, rstd, mean_ln, var_ln, pm, pv = mix_ops(
            mean_in, var_in, weight, mean_weight, var_weight, eps, mean_bn, var_bn, probs
        )
    return Mixed(
        scale,
        mean_in,
        var_in,
        mean_ln,
        var_ln,
        mean_bn,
        var_bn,
        pm,
        pv,
        mean,
        rstd,
        weight,
        bias,
        probs,
    )


def _softmax_backward(p: Tensor, dp: Tensor) -> Tensor:
    return p * (dp - (p * dp).sum())


def mix_backward(s: Mixed, g_c: Tensor, g_shift: Tensor):
    """Gradients of :func:`mix_forward` given the per-plane sums g_c = sum(dy * (x - m)) and
    g_shift = sum(dy), (N, C) each.

    With y = (x - mu) * scale + bias: dL/dmu = -g_shift * scale and
    dL/dscale = sum(dy * (x - mu)) = g_c + g_shift * (m - mu).

    Returns:
        d_mean_in, d_var_in (N, C) through the IN and LN terms only; d_weight, d_bias (C,);
        d_mean_weight, d_var_weight (K,); d_mean_bn, d_var_bn (1, C) or None. The caller
        propagates the BN-term gradients into d_mean_in/d_var_in when the BN term came
        from the batch (see :func:`bn_backward`), possibly after summing them over ranks.
    """
    if sn_kernels.on_cpu_kernels(s.mean_in, s.scale, g_c, g_shift):
        empty = s.mean_in.new_empty(0)
        out = sn_kernels._C.mix_backward(
            s.mean_in.contiguous(),
            s.var_in.contiguous(),
            s.weight.contiguous(),
            s.mean_ln,
            s.var_ln,
            empty if s.mean_bn is None else s.mean_bn.contiguous(),
            empty if s.var_bn is None else s.var_bn.contiguous(),
            s.pm,
            s.pv,
            s.mean,
            s.rstd,
            s.scale,
            g_c,
            g_shift,
            s.probs,
        )
        if s.mean_bn is None:
            out[6:] = [None, None]
        return tuple(out)

    n, c = s.mean_in.shape
    d_bias = g_shift.sum(0)
    d_mean = -g_shift * s.scale
    d_scale = g_c + g_shift * (s.mean_in - s.mean)
    d_weight = (d_scale * s.rstd).sum(0)
    # scale = weight * (var + eps)^-1/2  =>  d var = d scale * weight * -1/2 * rstd^3
    d_var = d_scale * s.weight * (-0.5) * s.rstd.pow(3)

    d_mean_ln = d_mean.sum(1, keepdim=True)  # (N, 1), before the mixing weight
    d_var_ln = d_var.sum(1, keepdim=True)
    # Mean terms centred on the mixed mean: removes a term common to every k (sum_k pm_k = 1),
    # which the softmax backward cancels anyway, and with it the cancellation of large means.
    dpm = [(d_mean * (s.mean_in - s.mean)).sum(), (d_mean * (s.mean_ln - s.mean)).sum()]
    dpv = [(d_var * s.var_in).sum(), (d_var_ln * s.var_ln).sum()]
    d_mean_bn = d_var_bn = None
    if s.mean_bn is not None:
        col_var = d_var.sum(0, keepdim=True)
        d_mean_bn = s.pm[2] * d_mean.sum(0, keepdim=True)
        d_var_bn = s.pv[2] * col_var
        dpm.append((d_mean * (s.mean_bn - s.mean)).sum())
        dpv.append((col_var * s.var_bn).sum())
    if s.probs:  # the centring term is cancelled by the simplex map upstream, as by softmax's
        d_mean_weight, d_var_weight = torch.stack(dpm), torch.stack(dpv)
    else:
        d_mean_weight = _softmax_backward(s.pm, torch.stack(dpm))
        d_var_weight = _softmax_backward(s.pv, torch.stack(dpv))

    # LN term: mean_ln = mean_c m, var_ln = mean_c v + mean_c (m - mean_ln)^2; the latter's
    # derivative in m is 2 (m - mean_ln) / C (the part through mean_ln sums to zero).
    g_mean_ln = s.pm[1] * d_mean_ln / c
    g_var_ln = s.pv[1] * d_var_ln / c
    d_mean_in = s.pm[0] * d_mean + g_mean_ln + 2 * (s.mean_in - s.mean_ln) * g_var_ln
    d_var_in = s.pv[0] * d_var + g_var_ln
    return d_mean_in, d_var_in, d_weight, d_bias, d_mean_weight, d_var_weight, d_mean_bn, d_var_bn


def bn_backward(
    s: Mixed, d_mean_in: Tensor, d_var_in: Tensor, d_mean_bn: Tensor, d_var_bn: Tensor, count
) -> Tuple[Tensor, Tensor]:
    """Add the gradient through batch BN moments to the instance-moment gradients.

    ``count`` is a number or a 0-d tensor (a synchronized layer's, left on the GPU).

    mean_bn = sum_n m / count and var_bn = sum_n (v + (m - mean_bn)^2) / count, where the sums
    may run over several ranks (then d_mean_bn/d_var_bn must already be summed over ranks).
    """
    d_sq = d_var_bn / count
    d_mean_in = d_mean_in + d_mean_bn / count + 2 * (s.mean_in - s.mean_bn) * d_sq
    return d_mean_in, d_var_in + d_sq


def dx_coefficients(
    s: Mixed,
    d_mean_in: Tensor,
    d_var_in: Tensor,
    bn_grads: Optional[Tuple[Tensor, Tensor]],
    count,
    length: int,
) -> Tuple[Tensor, Tensor]:
    """(a, b), (N, C) each, of dx = dy * scale + (x - m) * a + b.

    With m = mean_in, L = H*W and the instance-moment gradients completed by the batch BN
    term (:func:`bn_backward`, when ``bn_grads`` = (d_mean_bn, d_var_bn) is given):
    dx = dy * scale + d_mean_in / L + d_var_in * 2 (x - m) / (L - 1), so
    a = d_var_in * 2 / (L - 1) and b = d_mean_in / L. For L == 1, var_in is the constant 0
    and a = 0.
    """
    if sn_kernels.on_cpu_kernels(s.mean_in, d_mean_in, d_var_in):
        empty = s.mean_in.new_empty(0)
        d_mean_bn, d_var_bn = bn_grads if bn_grads is not None else (empty, empty)
        return tuple(
            sn_kernels._C.dx_coefficients(
                s.mean_in.contiguous(),
                d_mean_in.contiguous(),
                d_var_in.contiguous(),
                empty if bn_grads is None else s.mean_bn.contiguous(),
                d_mean_bn.contiguous(),
                d_var_bn.contiguous(),
                0.0 if count is None else float(count),  # a CPU tensor's read is free
                length,
            )
        )
    if bn_grads is not None:
        d_mean_in, d_var_in = bn_backward(s, d_mean_in, d_var_in, *bn_grads, count)
    a = d_var_in * (2.0 / (length - 1)) if length > 1 else torch.zeros_like(d_var_in)
    return a, d_mean_in / length
