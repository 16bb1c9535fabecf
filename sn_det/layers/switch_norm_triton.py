"""Switchable Normalization in Triton: the GPU implementation of SwitchNorm2d/SyncSwitchNorm2d.

Eight kernel launches per training step of a layer (forward + backward), whatever the shape:

    forward   _plane_moments    (N, C, L) -> per-plane mean and M2, split along L when there are
                                  few planes (partials combined by the next kernels)
              _batch_stats      BN term: per-channel mean/var over the batch (training only)
              [SyncSN: the (C,) moments of all ranks are pooled here, torch.distributed]
              _mix_rows         LN term per sample, the IN/LN/BN mix, mu/scale/rstd per plane,
                                  the running-statistics update
              _affine           y = (x - mu) * scale + bias
    backward  _backward_sums    per-plane sum(dy) and sum(dy * (x - mean_in)), split like above
              _backward_cols    per-channel sums: d_weight, d_bias, the BN-term gradients and the
                                  switch-logit gradients' partial sums
              [SyncSN: the BN-term gradients summed over ranks]
              _backward_rows    per-plane coefficients a, b of dx, the switch-logit gradients
              _backward_dx      dx = dy * scale + (x - mean_in) * a + b

Statistics accumulate in float32 whatever the input dtype (float32/float16, and bfloat16 from
sm_80: see dtype_supported), and no float32 copy of a half-precision input is made: the large
passes read the input as it is.
Every variance is a sum of non-negative terms (chunk variances merged as parallel variances,
Chan et al.), so none cancels for data far from zero. Inputs may be contiguous or
channels_last; the (N, C, L) view of either is passed as strides.

The kernels avoid constructs that the pinned Triton 2.3 interpreter lacks (runtime ``if`` on
tensors, ``tl.minimum``/``tl.maximum`` with Python scalars, ``x[:, None]``, reductions to 0-d),
so the suite runs them on CPU tensors under ``TRITON_INTERPRET=1``; the same code compiles with
Triton 3.x.
"""

import contextlib
import functools
import operator
from typing import Callable, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["SwitchNormTritonFunction", "dtype_supported", "on_device_of", "supports"]

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Programs to aim for in the plane passes, per streaming multiprocessor: enough to cover the
# GPU when there are few (n, c) planes. On CPU tensors (the interpreter) a small fixed number,
# so that small test shapes still exercise the split path.
_PROGRAMS_PER_SM = 4
INTERPRETER_TARGET_PROGRAMS = 8
# Given at every launch rather than left to Triton's default: fused multiply-adds, as every
# Triton from 2.3 to 3.9 compiled by default and as the checks and timings were made with.
# Triton 3.9 warns that its default turns to unfused in 3.10, which would change the
# kernels' rounding and speed with the Triton version.
_COMPILE_OPTIONS = {"enable_fp_fusion": True}


def dtype_supported(dtype: torch.dtype, capability: Optional[Tuple[int, int]]) -> bool:
    """Whether the kernels take ``dtype`` on a GPU of compute ``capability`` (None: CPU
    tensors, the interpreter). bfloat16 needs sm_80: for older GPUs (T4, V100) ptxas refuses
    the kernels' bf16 loads ("Feature '.bf16' requires .target sm_80 or higher", found by
    tools/check_triton_compile.py), so SN takes its torch-ops path there."""
    if dtype == torch.bfloat16 and capability is not None:
        return capability >= (8, 0)
    return dtype in SUPPORTED_DTYPES


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> Tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.lru_cache(maxsize=None)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def supports(x: Tensor) -> bool:
    """Whether this implementation handles ``x`` (dtype and a layout it can stride through)."""
    capability = _capability(x.device.index) if x.is_cuda else None
    return dtype_supported(x.dtype, capability) and x.dim() == 4 and _plan_of(x) is not None


# ---------------------------------------------------------------------------------- helpers
@triton.jit
def _min(a, b):
    return tl.where(a < b, a, b)


@triton.jit
def _max(a, b):
    return tl.where(a > b, a, b)


@triton.jit
def _merge(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Parallel variances (Chan et al.): the count, mean and M2 = sum (x - mean)^2 of two
    groups together, from each group's. No step subtracts two large sums."""
    tot = n_a + n_b
    frac = n_b / _max(tot, 1.0)
    delta = mean_b - mean_a
    return tot, mean_a + delta * frac, m2_a + m2_b + delta * delta * n_a * frac


@triton.jit
def _combine_split_moments(mean_ptr, m2_ptr, idx, mask, S, span, L, NC):
    """Merge the S per-split (mean, M2) partials of the planes ``idx`` (any shape) into the
    plane mean and unbiased variance, as parallel variances: no cancellation."""
    mean = tl.zeros(idx.shape, dtype=tl.float32)
    m2 = tl.zeros(idx.shape, dtype=tl.float32)
    n_a = 0.0
    for s in range(0, S):
        cnt = _max(_min(L - s * span, span), 0).to(tl.float32)
        mean_s = tl.load(mean_ptr + s * NC + idx, mask=mask, other=0.0)
        m2_s = tl.load(m2_ptr + s * NC + idx, mask=mask, other=0.0)
        n_a, mean, m2 = _merge(n_a, mean, m2, cnt, mean_s, m2_s)
    # L == 1: the unbiased variance would be 0/0; the variance of one element is 0.
    var = m2 / _max(L - 1, 1).to(tl.float32)
    return mean, var


@triton.jit
def _plane_block(pid, C, BLOCK_C: tl.constexpr):
    """The planes of (sample, channel block) number ``pid``, of N * cdiv(C, BLOCK_C): sample
    n, channel indices cs [BLOCK_C] and their mask."""
    c_blocks = tl.cdiv(C, BLOCK_C)
    cs = (pid % c_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid // c_blocks, cs, cs < C


@triton.jit
def _plane_position_block(C, L, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's tile of the elementwise passes: sample n, channels cs [BLOCK_C], their
    mask, positions ls [BLOCK_L]. One grid axis runs over every (sample, channel block,
    position block), positions fastest: CUDA caps grid axes 1 and 2 at 65535 blocks, which
    position blocks alone exceed for large channels_last maps (32 positions a block at C=64)."""
    pid = tl.program_id(0)
    l_blocks = tl.cdiv(L, BLOCK_L)
    n, cs, c_mask = _plane_block(pid // l_blocks, C, BLOCK_C)
    return n, cs, c_mask, (pid % l_blocks) * BLOCK_L + tl.arange(0, BLOCK_L)


@triton.jit
def _tile_offsets(n, cs, ls, s_n, s_c, s_l):
    """Element offsets [BLOCK_C, BLOCK_L] of planes (n, cs) at positions ls, for strides
    (s_n, s_c, s_l); in int64, as activations may hold more than 2^31 elements."""
    cs64 = tl.expand_dims(cs.to(tl.int64), 1)
    ls64 = tl.expand_dims(ls.to(tl.int64), 0)
    return n.to(tl.int64) * s_n + cs64 * s_c + ls64 * s_l


@triton.jit
def _softmax3(ptr, K: tl.constexpr, PROBS: tl.constexpr):  # noqa: N803
    """Softmax of the K (2 or 3) switch logits at ``ptr``, as three scalars (p2 = 0 if K == 2);
    PROBS: the values at ``ptr`` are the mixing probabilities already (Sparse SN)."""
    l0 = tl.load(ptr).to(tl.float32)
    l1 = tl.load(ptr + 1).to(tl.float32)
    if K == 3:
        l2 = tl.load(ptr + 2).to(tl.float32)
    else:
        l2 = l0
    if PROBS:
        if K == 3:
            return l0, l1, l2
        else:
            return l0, l1, l0 * 0.0
    mx = _max(_max(l0, l1), l2)
    e0 = tl.exp(l0 - mx)
    e1 = tl.exp(l1 - mx)
    if K == 3:
        e2 = tl.exp(l2 - mx)
    else:
        e2 = e0 * 0.0
    total = e0 + e1 + e2
    return e0 / total, e1 / total, e2 / total


# ---------------------------------------------------------------------------------- forward
@triton.jit
def _plane_moments_kernel(
    x_ptr,
    mean_ptr,
    m2_ptr,  # x (N, C, L) by strides; partials (S, N*C) float32
    N,
    C,
    L,
    s_n,
    s_c,
    s_l,
    span,
    chunks_per_split,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Program (n, channel block, split s): mean and M2 = sum (x - mean)^2 of its planes over
    positions [s * span, (s + 1) * span), chunk by chunk, each chunk merged as a parallel variance.
    """
    split = tl.program_id(1)
    n, cs, c_mask = _plane_block(tl.program_id(0), C, BLOCK_C)
    base = x_ptr + n.to(tl.int64) * s_n + tl.expand_dims(cs.to(tl.int64) * s_c, 1)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    n_a = 0.0
    for i in range(0, chunks_per_split):
        l0 = split * span + i * BLOCK_L
        ls = l0 + tl.arange(0, BLOCK_L)
        mask = tl.expand_dims(c_mask, 1) & tl.expand_dims(ls < L, 0)
        x = tl.load(base + tl.expand_dims(ls.to(tl.int64) * s_l, 0), mask=mask, other=0.0)
        x = x.to(tl.float32)
        cnt = _max(_min(L - l0, BLOCK_L), 0).to(tl.float32)
        mean_c = tl.sum(x, axis=1) / _max(cnt, 1.0)
        d = tl.where(mask, x - tl.expand_dims(mean_c, 1), 0.0)
        m2_c = tl.sum(d * d, axis=1)
        n_a, mean, m2 = _merge(n_a, mean, m2, cnt, mean_c, m2_c)
    out = split * N * C + n * C + cs
    tl.store(mean_ptr + out, mean, mask=c_mask)
    tl.store(m2_ptr + out, m2, mask=c_mask)


@triton.jit
def _batch_stats_kernel(
    mean_ptr,
    m2_ptr,  # split partials (S, N*C)
    bn_mean_ptr,
    bn_var_ptr,  # (C,) float32 out
    N,
    C,
    L,
    S,
    span,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (channel block): mean_bn = mean_n m, var_bn = mean_n v + mean_n (m - mean_bn)^2,
    over the samples in blocks of BLOCK_N, merged as parallel variances."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    sum_v = tl.zeros([BLOCK_C], dtype=tl.float32)
    n_a = 0.0
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = tl.expand_dims(ns < N, 1) & tl.expand_dims(c_mask, 0)
        idx = tl.expand_dims(ns * C, 1) + tl.expand_dims(cs, 0)
        m, v = _combine_split_moments(mean_ptr, m2_ptr, idx, mask, S, span, L, N * C)
        cnt = _min(N - n0, BLOCK_N).to(tl.float32)
        mean_b = tl.sum(tl.where(mask, m, 0.0), axis=0) / cnt
        d = tl.where(mask, m - tl.expand_dims(mean_b, 0), 0.0)
        m2_b = tl.sum(d * d, axis=0)
        sum_v += tl.sum(tl.where(mask, v, 0.0), axis=0)
        n_a, mean, m2 = _merge(n_a, mean, m2, cnt, mean_b, m2_b)
    tl.store(bn_mean_ptr + cs, mean, mask=c_mask)
    tl.store(bn_var_ptr + cs, (sum_v + m2) / N, mask=c_mask)


@triton.jit
def _mix_rows_kernel(
    mean_ptr,
    m2_ptr,  # split partials (S, N*C)
    weight_ptr,
    mean_logit_ptr,
    var_logit_ptr,
    bn_mean_ptr,
    bn_var_ptr,  # (C,) BN term: batch moments or running statistics
    run_mean_ptr,
    run_var_ptr,  # (C,) running statistics, updated in place if UPDATE
    mean_in_ptr,
    var_in_ptr,
    ln_mean_ptr,
    ln_var_ptr,  # outputs (N*C), (N*C), (N,), (N,)
    mu_ptr,
    scale_ptr,
    rstd_ptr,  # outputs (N*C) float32
    N,
    C,
    L,
    S,
    span,
    eps,
    momentum,
    K: tl.constexpr,
    PROBS: tl.constexpr,
    UPDATE: tl.constexpr,
    MOVING: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (block of samples): the plane moments (from the split partials), the LN moments
    of each sample (first loop over C), then per plane mu, rstd and scale = weight * rstd
    (second loop). The program holding sample 0 also folds the batch BN moments into the
    running statistics (UPDATE; MOVING: running = momentum * running + (1 - momentum) * batch,
    else the batch-average sums)."""
    ns = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    pm0, pm1, pm2 = _softmax3(mean_logit_ptr, K, PROBS)
    pv0, pv1, pv2 = _softmax3(var_logit_ptr, K, PROBS)
    ln_mean = tl.zeros([BLOCK_N], dtype=tl.float32)
    ln_m2 = tl.zeros([BLOCK_N], dtype=tl.float32)
    sum_v = tl.zeros([BLOCK_N], dtype=tl.float32)
    n_a = 0.0
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        mask = tl.expand_dims(n_mask, 1) & tl.expand_dims(cs < C, 0)
        idx = tl.expand_dims(ns * C, 1) + tl.expand_dims(cs, 0)
        m, v = _combine_split_moments(mean_ptr, m2_ptr, idx, mask, S, span, L, N * C)
        tl.store(mean_in_ptr + idx, m, mask=mask)
        tl.store(var_in_ptr + idx, v, mask=mask)
        cnt = _min(C - c0, BLOCK_C).to(tl.float32)
        mean_b = tl.sum(tl.where(mask, m, 0.0), axis=1) / cnt
        d = tl.where(mask, m - tl.expand_dims(mean_b, 1), 0.0)
        m2_b = tl.sum(d * d, axis=1)
        sum_v += tl.sum(tl.where(mask, v, 0.0), axis=1)
        n_a, ln_mean, ln_m2 = _merge(n_a, ln_mean, ln_m2, cnt, mean_b, m2_b)
    ln_var = (sum_v + ln_m2) / C
    tl.store(ln_mean_ptr + ns, ln_mean, mask=n_mask)
    tl.store(ln_var_ptr + ns, ln_var, mask=n_mask)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_mask = cs < C
        mask = tl.expand_dims(n_mask, 1) & tl.expand_dims(c_mask, 0)
        idx = tl.expand_dims(ns * C, 1) + tl.expand_dims(cs, 0)
        # Merged again rather than read back from mean_in/var_in: this program stored those,
        # and without a barrier another thread of it may read a location before its store.
        m, v = _combine_split_moments(mean_ptr, m2_ptr, idx, mask, S, span, L, N * C)
        mu = pm0 * m + pm1 * tl.expand_dims(ln_mean, 1)
        sig = pv0 * v + pv1 * tl.expand_dims(ln_var, 1)
        if K == 3:
            bm = tl.load(bn_mean_ptr + cs, mask=c_mask, other=0.0).to(tl.float32)
            bv = tl.load(bn_var_ptr + cs, mask=c_mask, other=0.0).to(tl.float32)
            mu += pm2 * tl.expand_dims(bm, 0)
            sig += pv2 * tl.expand_dims(bv, 0)
            if UPDATE:
                first = (tl.expand_dims(ns, 1) == 0) & mask  # the row of sample 0 only
                cidx = tl.expand_dims(cs, 0) + tl.expand_dims(ns * 0, 1)  # (n, c) -> c
                zero = tl.zeros([BLOCK_N, BLOCK_C], dtype=tl.float32)
                bm2 = tl.expand_dims(bm, 0) + zero
                bv2 = tl.expand_dims(bv, 0) + zero
                rm = tl.load(run_mean_ptr + cidx, mask=first, other=0.0).to(tl.float32)
                rv = tl.load(run_var_ptr + cidx, mask=first, other=0.0).to(tl.float32)
                if MOVING:  # momentum weighs the OLD value (the SN papers' convention)
                    rm = momentum * rm + (1.0 - momentum) * bm2
                    rv = momentum * rv + (1.0 - momentum) * bv2
                else:  # batch-average mode: sums of mean and of E[x^2], finalised later
                    rm = rm + bm2
                    rv = rv + bm2 * bm2 + bv2
                tl.store(run_mean_ptr + cidx, rm, mask=first)
                tl.store(run_var_ptr + cidx, rv, mask=first)
        rstd = 1.0 / tl.sqrt(sig + eps)
        w = tl.load(weight_ptr + cs, mask=c_mask, other=0.0).to(tl.float32)
        tl.store(mu_ptr + idx, mu, mask=mask)
        tl.store(rstd_ptr + idx, rstd, mask=mask)
        tl.store(scale_ptr + idx, rstd * tl.expand_dims(w, 0), mask=mask)


@triton.jit
def _affine_kernel(
    x_ptr,
    y_ptr,
    mu_ptr,
    scale_ptr,
    bias_ptr,
    C,
    L,
    s_n,
    s_c,
    s_l,
    t_n,
    t_c,
    t_l,  # strides of x and of y
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Program (n, channel block, position block): y = (x - mu) * scale + bias."""
    n, cs, c_mask, ls = _plane_position_block(C, L, BLOCK_C, BLOCK_L)
    mask = tl.expand_dims(c_mask, 1) & tl.expand_dims(ls < L, 0)
    mu = tl.load(mu_ptr + n * C + cs, mask=c_mask, other=0.0)
    scale = tl.load(scale_ptr + n * C + cs, mask=c_mask, other=0.0)
    bias = tl.load(bias_ptr + cs, mask=c_mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + _tile_offsets(n, cs, ls, s_n, s_c, s_l), mask=mask, other=0.0)
    y = (x.to(tl.float32) - tl.expand_dims(mu, 1)) * tl.expand_dims(scale, 1)
    y = y + tl.expand_dims(bias, 1)
    tl.store(y_ptr + _tile_offsets(n, cs, ls, t_n, t_c, t_l), y, mask=mask)


# ---------------------------------------------------------------------------------- backward
@triton.jit
def _backward_sums_kernel(
    dy_ptr,
    x_ptr,
    mean_in_ptr,
    g_shift_ptr,
    g_c_ptr,  # partial sums (S, N*C) float32 out
    N,
    C,
    L,
    s_n,
    s_c,
    s_l,
    t_n,
    t_c,
    t_l,  # strides of x and of dy
    span,
    chunks_per_split,
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Program (n, channel block, split): sum(dy) and sum(dy * (x - mean_in)) over its span."""
    split = tl.program_id(1)
    n, cs, c_mask = _plane_block(tl.program_id(0), C, BLOCK_C)
    m = tl.load(mean_in_ptr + n * C + cs, mask=c_mask, other=0.0)
    acc_g = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_gx = tl.zeros([BLOCK_C], dtype=tl.float32)
    for i in range(0, chunks_per_split):
        ls = split * span + i * BLOCK_L + tl.arange(0, BLOCK_L)
        mask = tl.expand_dims(c_mask, 1) & tl.expand_dims(ls < L, 0)
        x = tl.load(x_ptr + _tile_offsets(n, cs, ls, s_n, s_c, s_l), mask=mask, other=0.0)
        g = tl.load(dy_ptr + _tile_offsets(n, cs, ls, t_n, t_c, t_l), mask=mask, other=0.0)
        g = g.to(tl.float32)
        xc = tl.where(mask, x.to(tl.float32) - tl.expand_dims(m, 1), 0.0)
        acc_g += tl.sum(g, axis=1)
        acc_gx += tl.sum(g * xc, axis=1)
    out = split * N * C + n * C + cs
    tl.store(g_shift_ptr + out, acc_g, mask=c_mask)
    tl.store(g_c_ptr + out, acc_gx, mask=c_mask)


@triton.jit
def _mix_grads(g_shift_ptr, g_c_ptr, idx, mask, S, NC, m, mu, scale, rstd, w):
    """Per plane: the summed g_shift, d_mean = dL/dmu, d_scale = dL/dscale and d_var = dL/dsig,
    for y = (x - mu) * scale + bias with scale = w * rstd, rstd = (sig + eps)^-1/2."""
    g_shift = tl.zeros(idx.shape, dtype=tl.float32)
    g_c = tl.zeros(idx.shape, dtype=tl.float32)
    for s in range(0, S):
        g_shift += tl.load(g_shift_ptr + s * NC + idx, mask=mask, other=0.0)
        g_c += tl.load(g_c_ptr + s * NC + idx, mask=mask, other=0.0)
    d_mean = -g_shift * scale
    d_scale = g_c + g_shift * (m - mu)  # sum dy (x - mu), without cancelling mu
    d_var = d_scale * w * -0.5 * rstd * rstd * rstd
    return g_shift, d_mean, d_scale, d_var


@triton.jit
def _backward_cols_kernel(
    g_shift_ptr,
    g_c_ptr,  # partial sums (S, N*C)
    mean_in_ptr,
    var_in_ptr,
    ln_mean_ptr,
    ln_var_ptr,
    mu_ptr,
    scale_ptr,
    rstd_ptr,
    weight_ptr,
    mean_logit_ptr,
    var_logit_ptr,
    bn_mean_ptr,
    bn_var_ptr,
    d_weight_ptr,
    d_bias_ptr,  # (C,) in the parameters' dtype
    d_mean_bn_ptr,
    d_var_bn_ptr,  # (C,) float32: gradients of the BN-term mean and variance
    logit_ptr,  # (6, C) float32: per-channel partial sums of the switch-logit gradients
    N,
    C,
    S,
    K: tl.constexpr,
    PROBS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (channel block): sums over the samples. The logit partials are the mean terms
    sum d_mean * (mean_k - mu) (centred on the mixed mean: the softmax backward cancels the
    common part, and with it the cancellation of large means) and sum d_var * var_k."""
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    _, _, pm2 = _softmax3(mean_logit_ptr, K, PROBS)
    _, _, pv2 = _softmax3(var_logit_ptr, K, PROBS)
    w = tl.expand_dims(tl.load(weight_ptr + cs, mask=c_mask, other=0.0).to(tl.float32), 0)
    if K == 3:
        bm = tl.expand_dims(tl.load(bn_mean_ptr + cs, mask=c_mask, other=0.0).to(tl.float32), 0)
        bv = tl.expand_dims(tl.load(bn_var_ptr + cs, mask=c_mask, other=0.0).to(tl.float32), 0)
    acc_w = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_m = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc_v = tl.zeros([BLOCK_C], dtype=tl.float32)
    lp0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    lp1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    lp2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    lv0 = tl.zeros([BLOCK_C], dtype=tl.float32)
    lv1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    lv2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        n_mask = ns < N
        mask = tl.expand_dims(n_mask, 1) & tl.expand_dims(c_mask, 0)
        idx = tl.expand_dims(ns * C, 1) + tl.expand_dims(cs, 0)
        m = tl.load(mean_in_ptr + idx, mask=mask, other=0.0)
        v = tl.load(var_in_ptr + idx, mask=mask, other=0.0)
        mu = tl.load(mu_ptr + idx, mask=mask, other=0.0)
        scale = tl.load(scale_ptr + idx, mask=mask, other=0.0)
        rstd = tl.load(rstd_ptr + idx, mask=mask, other=0.0)
        ml = tl.expand_dims(tl.load(ln_mean_ptr + ns, mask=n_mask, other=0.0), 1)
        vl = tl.expand_dims(tl.load(ln_var_ptr + ns, mask=n_mask, other=0.0), 1)
        g_shift, d_mean, d_scale, d_var = _mix_grads(
            g_shift_ptr, g_c_ptr, idx, mask, S, N * C, m, mu, scale, rstd, w
        )
        acc_w += tl.sum(d_scale * rstd, axis=0)
        acc_b += tl.sum(g_shift, axis=0)
        acc_m += tl.sum(d_mean, axis=0)
        acc_v += tl.sum(d_var, axis=0)
        lp0 += tl.sum(d_mean * (m - mu), axis=0)
        lp1 += tl.sum(tl.where(mask, d_mean * (ml - mu), 0.0), axis=0)
        lv0 += tl.sum(d_var * v, axis=0)
        lv1 += tl.sum(d_var * vl, axis=0)
        if K == 3:
            lp2 += tl.sum(tl.where(mask, d_mean * (bm - mu), 0.0), axis=0)
            lv2 += tl.sum(d_var * bv, axis=0)
    tl.store(d_weight_ptr + cs, acc_w, mask=c_mask)
    tl.store(d_bias_ptr + cs, acc_b, mask=c_mask)
    tl.store(d_mean_bn_ptr + cs, pm2 * acc_m, mask=c_mask)
    tl.store(d_var_bn_ptr + cs, pv2 * acc_v, mask=c_mask)
    tl.store(logit_ptr + cs, lp0, mask=c_mask)
    tl.store(logit_ptr + C + cs, lp1, mask=c_mask)
    tl.store(logit_ptr + 2 * C + cs, lp2, mask=c_mask)
    tl.store(logit_ptr + 3 * C + cs, lv0, mask=c_mask)
    tl.store(logit_ptr + 4 * C + cs, lv1, mask=c_mask)
    tl.store(logit_ptr + 5 * C + cs, lv2, mask=c_mask)


@triton.jit
def _logit_grads(logit_ptr, p0, p1, p2, row, C, BLOCK_C: tl.constexpr, PROBS: tl.constexpr):
    """Softmax backward of one logit vector from the (3, C) partials starting at ``row``:
    d logit_k = p_k (dp_k - sum_j p_j dp_j), as a [1, 4] tile (lanes 0..2). PROBS: dp itself
    (its common centring term is cancelled by the simplex map upstream)."""
    lanes = tl.expand_dims(tl.arange(0, 4), 0)
    dp = tl.zeros([1, 4], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        c_mask = tl.expand_dims(cs < C, 1)
        idx = tl.expand_dims(cs, 1) + lanes * C
        part = tl.load(logit_ptr + row * C + idx, mask=c_mask & (lanes < 3), other=0.0)
        dp += tl.expand_dims(tl.sum(part, axis=0), 0)
    if PROBS:
        return dp, lanes
    p = tl.where(lanes == 0, p0, tl.where(lanes == 1, p1, tl.where(lanes == 2, p2, 0.0)))
    total = tl.sum(p * dp, axis=1)
    return p * (dp - tl.expand_dims(total, 1)), lanes


@triton.jit
def _row_chunk_grads(
    g_shift_ptr, g_c_ptr, mean_in_ptr, mu_ptr, scale_ptr, rstd_ptr, weight_ptr,
    ns, n_mask, c0, N, C, S, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """The planes of samples ``ns`` [BLOCK_N] and channels c0 .. c0 + BLOCK_C: (channel
    indices, channel mask, [BLOCK_N, BLOCK_C] mask and offsets, mean_in, d_mean, d_var)."""
    cs = c0 + tl.arange(0, BLOCK_C)
    c_mask = cs < C
    mask = tl.expand_dims(n_mask, 1) & tl.expand_dims(c_mask, 0)
    idx = tl.expand_dims(ns * C, 1) + tl.expand_dims(cs, 0)
    w = tl.expand_dims(tl.load(weight_ptr + cs, mask=c_mask, other=0.0).to(tl.float32), 0)
    m = tl.load(mean_in_ptr + idx, mask=mask, other=0.0)
    mu = tl.load(mu_ptr + idx, mask=mask, other=0.0)
    scale = tl.load(scale_ptr + idx, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + idx, mask=mask, other=0.0)
    _, d_mean, _, d_var = _mix_grads(
        g_shift_ptr, g_c_ptr, idx, mask, S, N * C, m, mu, scale, rstd, w
    )
    return cs, c_mask, mask, idx, m, d_mean, d_var


@triton.jit
def _backward_rows_kernel(
    g_shift_ptr,
    g_c_ptr,  # partial sums (S, N*C)
    mean_in_ptr,
    ln_mean_ptr,
    mu_ptr,
    scale_ptr,
    rstd_ptr,
    weight_ptr,
    mean_logit_ptr,
    var_logit_ptr,
    bn_mean_ptr,
    d_mean_bn_ptr,
    d_var_bn_ptr,  # BN term and its (rank-summed) gradients
    logit_ptr,  # (6, C) partials from _backward_cols
    a_ptr,
    b_ptr,  # (N*C) float32 out: dx = dy * scale + (x - mean_in) * a + b
    d_mean_logit_ptr,
    d_var_logit_ptr,  # (K,) out, in the parameters' dtype
    N,
    C,
    L,
    S,
    count,
    K: tl.constexpr,
    PROBS: tl.constexpr,
    BN_BATCH: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (block of samples): the instance-moment gradients through IN, LN and (BN_BATCH:
    the BN term came from this batch of ``count`` samples) BN, turned into the coefficients
    of dx. Program 0 also stores the switch-logit gradients."""
    pid = tl.program_id(0)
    ns = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    pm0, pm1, pm2 = _softmax3(mean_logit_ptr, K, PROBS)
    pv0, pv1, pv2 = _softmax3(var_logit_ptr, K, PROBS)
    row_m = tl.zeros([BLOCK_N], dtype=tl.float32)
    row_v = tl.zeros([BLOCK_N], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):  # first: the LN-term sums over channels
        _, _, _, _, _, d_mean, d_var = _row_chunk_grads(
            g_shift_ptr, g_c_ptr, mean_in_ptr, mu_ptr, scale_ptr, rstd_ptr, weight_ptr,
            ns, n_mask, c0, N, C, S, BLOCK_C,
        )  # fmt: skip
        row_m += tl.sum(d_mean, axis=1)
        row_v += tl.sum(d_var, axis=1)
    ml = tl.expand_dims(tl.load(ln_mean_ptr + ns, mask=n_mask, other=0.0), 1)
    # LN: mean_ln = mean_c m, var_ln = mean_c v + mean_c (m - mean_ln)^2 (derivative in m:
    # 2 (m - mean_ln) / C; the part through mean_ln sums to zero).
    g_ml = tl.expand_dims(pm1 * row_m / C, 1)
    g_vl = tl.expand_dims(pv1 * row_v / C, 1)
    two_over_l1 = tl.where(L > 1, 2.0 / _max(L - 1, 1).to(tl.float32), 0.0)
    for c0 in range(0, C, BLOCK_C):
        cs, c_mask, mask, idx, m, d_mean, d_var = _row_chunk_grads(
            g_shift_ptr, g_c_ptr, mean_in_ptr, mu_ptr, scale_ptr, rstd_ptr, weight_ptr,
            ns, n_mask, c0, N, C, S, BLOCK_C,
        )  # fmt: skip
        d_mean_in = pm0 * d_mean + g_ml + 2.0 * (m - ml) * g_vl
        d_var_in = pv0 * d_var + g_vl
        if BN_BATCH:  # mean_bn = mean_n m, var_bn = mean_n v + mean_n (m - mean_bn)^2
            bm = tl.load(bn_mean_ptr + cs, mask=c_mask, other=0.0).to(tl.float32)
            dbm = tl.load(d_mean_bn_ptr + cs, mask=c_mask, other=0.0)
            dbv = tl.load(d_var_bn_ptr + cs, mask=c_mask, other=0.0)
            d_sq = tl.expand_dims(dbv / count, 0)
            d_mean_in += tl.expand_dims(dbm / count, 0)
            d_mean_in += 2.0 * (m - tl.expand_dims(bm, 0)) * d_sq
            d_var_in += d_sq
        tl.store(a_ptr + idx, d_var_in * two_over_l1, mask=mask)
        tl.store(b_ptr + idx, d_mean_in / L, mask=mask)
    # Every program reduces the (6, C) partials (cheap); program 0 stores the result. The mask
    # is lanes < K on program 0 only (K <= 3 < 4 lanes), written as one comparison: Triton
    # 3.9's interpreter gives `block_mask & (pid == 0)` int32 data, which its store refuses.
    d_pm, lanes = _logit_grads(logit_ptr, pm0, pm1, pm2, 0, C, BLOCK_C, PROBS)
    on_first = (lanes + 4 * pid) < K
    tl.store(d_mean_logit_ptr + lanes, d_pm, mask=on_first)
    d_pv, lanes = _logit_grads(logit_ptr, pv0, pv1, pv2, 3, C, BLOCK_C, PROBS)
    tl.store(d_var_logit_ptr + lanes, d_pv, mask=on_first)


@triton.jit
def _backward_dx_kernel(
    dy_ptr,
    x_ptr,
    dx_ptr,
    mean_in_ptr,
    scale_ptr,
    a_ptr,
    b_ptr,
    C,
    L,
    s_n,
    s_c,
    s_l,
    t_n,
    t_c,
    t_l,
    u_n,
    u_c,
    u_l,  # strides of x, dy, dx
    BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr,
):
    """Program (n, channel block, position block): dx = dy * scale + (x - mean_in) * a + b."""
    n, cs, c_mask, ls = _plane_position_block(C, L, BLOCK_C, BLOCK_L)
    mask = tl.expand_dims(c_mask, 1) & tl.expand_dims(ls < L, 0)
    plane = n * C + cs
    m = tl.expand_dims(tl.load(mean_in_ptr + plane, mask=c_mask, other=0.0), 1)
    s = tl.expand_dims(tl.load(scale_ptr + plane, mask=c_mask, other=0.0), 1)
    a = tl.expand_dims(tl.load(a_ptr + plane, mask=c_mask, other=0.0), 1)
    b = tl.expand_dims(tl.load(b_ptr + plane, mask=c_mask, other=0.0), 1)
    x = tl.load(x_ptr + _tile_offsets(n, cs, ls, s_n, s_c, s_l), mask=mask, other=0.0)
    g = tl.load(dy_ptr + _tile_offsets(n, cs, ls, t_n, t_c, t_l), mask=mask, other=0.0)
    dx = g.to(tl.float32) * s + (x.to(tl.float32) - m) * a + b
    tl.store(dx_ptr + _tile_offsets(n, cs, ls, u_n, u_c, u_l), dx, mask=mask)


# ---------------------------------------------------------------------------------- launchers
def _plane_strides(t: Tensor) -> Optional[Tuple[int, int, int]]:
    """(n, c, l) strides of the (N, C, H*W) view of a 4-d tensor, or None if H and W do not
    merge into one strided dimension (neither contiguous nor channels_last)."""
    return _merged_strides(t.shape, t.stride())


def _merged_strides(shape, strides) -> Optional[Tuple[int, int, int]]:
    """:func:`_plane_strides` of a tensor of this shape and these strides."""
    s_n, s_c, s_h, s_w = strides
    h, w = shape[2], shape[3]
    if w == 1:
        return s_n, s_c, s_h if h > 1 else 1
    if h == 1 or s_h == s_w * w:
        return s_n, s_c, s_w
    return None


def _next_pow2(v: int) -> int:
    return 1 << max(int(v) - 1, 0).bit_length()


def _plane_tile(c: int, length: int, channels_fast: bool) -> Tuple[int, int]:
    """(BLOCK_C, BLOCK_L) of the plane passes: long runs along the contiguous dimension."""
    if channels_fast:  # channels_last: C is the contiguous dimension
        block_c = min(_next_pow2(c), 64)
        block_l = min(_next_pow2(length), max(1, 2048 // block_c))
    else:
        block_l = min(_next_pow2(length), 1024)
        block_c = min(_next_pow2(c), max(1, 2048 // block_l))
    return block_c, block_l


def _target_programs(device: torch.device) -> int:
    """Programs the plane passes aim for on ``device`` (read at each call: the compile check
    sets INTERPRETER_TARGET_PROGRAMS to a GPU's count)."""
    if device.type == "cuda":
        return _PROGRAMS_PER_SM * _multiprocessors(device.index)
    return INTERPRETER_TARGET_PROGRAMS


def _split_counts(target: int, planes_programs: int, chunks: int) -> Tuple[int, int]:
    """(number of splits S, chunks per split) along L for the plane reductions, aiming at
    ``target`` programs in all."""
    want = max(1, min(chunks, -(-target // planes_programs)))
    per_split = -(-chunks // want)
    return -(-chunks // per_split), per_split


def _small_tile(n: int, c: int, along_n: bool) -> Tuple[int, int]:
    """(BLOCK_N, BLOCK_C) of the (N, C) kernels: reductions over n (columns) or c (rows).

    Row tiles stay at 1024 elements: _backward_rows holds about ten (N, C) tiles at once, and
    at 2048 elements ptxas spilled registers to local memory for sm_90 (24 bytes at 128
    registers, `python -m sn_det.tools.check_triton_compile`)."""
    if along_n:
        return min(_next_pow2(n), 64), min(_next_pow2(c), 32)
    return min(_next_pow2(n), 8), min(_next_pow2(c), 128)


# Work buffers are carved from one allocation per direction (a CUDA allocation costs the host
# a few microseconds, and a layer step made 18 of them); each part starts at a multiple of
# this many float32 elements, 128 bytes, as a fresh allocation would: Triton specializes
# pointer arguments on 16-byte alignment.
_ALIGN = 32


def _layout(*sizes: int) -> Tuple[Tuple[int, ...], Callable]:
    """How :func:`_carve` cuts one allocation into tensors of ``sizes``, each at an aligned
    offset: the split sizes (the pieces, and pads where a piece's end is not aligned) and a
    function that picks the pieces out of the split."""
    split, keep = [], []
    for i, size in enumerate(sizes):
        keep.append(len(split))
        split.append(size)
        if -size % _ALIGN and i < len(sizes) - 1:
            split.append(-size % _ALIGN)
    if len(keep) == 1:  # itemgetter of one index would return the piece, not a tuple
        return tuple(split), lambda parts: parts[:1]
    return tuple(split), operator.itemgetter(*keep)


def _carve(layout: Tuple[Tuple[int, ...], Callable], device: torch.device) -> Tuple[Tensor, ...]:
    """Uninitialised 1-d float32 tensors, views of one allocation, as :func:`_layout` says.
    (Splitting costs the host about a microsecond a view: pieces are few, and pads only
    where needed.)"""
    split, pick = layout
    return pick(torch.empty(sum(split), device=device, dtype=torch.float32).split_with_sizes(split))


class _Plan(NamedTuple):
    """What a layer call's host work depends on besides its data: tiles, grids, strides and
    the layout of the float32 work buffers, a function of the input's shape, strides and
    device only. Computed once per such input by :func:`_plan`."""

    x_strides: Tuple[int, int, int]  # (n, c, l) strides of the input
    y_strides: Tuple[int, int, int]  # of empty_like(input): the output's and dx's
    block_c: int  # the plane passes' tile (BLOCK_C, BLOCK_L)
    block_l: int
    n_splits: int  # S, splits along L of the plane reductions, per_split chunks each
    per_split: int
    span: int  # positions per split, per_split * BLOCK_L
    split_grid: Tuple[int, int]  # (n * channel blocks, S): the plane reductions
    elem_grid: Tuple[int]  # the elementwise passes (affine, dx)
    cols_grid: Tuple[int]  # the (N, C) kernels reducing over samples, and their tile
    cols_tile: Tuple[int, int]
    rows_grid: Tuple[int]  # those reducing over channels, and their tile
    rows_tile: Tuple[int, int]
    # _layout()s of the work buffers. Forward, temporary: part_mean, part_m2 (S * NC each).
    # Forward, saved: mean_in, var_in, mu, scale, rstd (NC), bn_mean, bn_var (C), ln_mean,
    # ln_var (N). Backward: g_shift, g_c (S * NC), a, b (NC), d_mean_bn, d_var_bn (C), logit
    # partials (6 C). The sizes that are rarely multiples of the alignment come last.
    partials: Tuple[Tuple[int, ...], Callable]
    state: Tuple[Tuple[int, ...], Callable]
    grads: Tuple[Tuple[int, ...], Callable]


@functools.lru_cache(maxsize=1024)
def _plan(shape: torch.Size, strides: Tuple[int, ...], device: torch.device, target: int):
    """The :class:`_Plan` of an (N, C, H, W) input (``target``: :func:`_target_programs`), or
    None for strides the kernels cannot walk (H and W not mergeable)."""
    x_strides = _merged_strides(shape, strides)
    if x_strides is None:
        return None
    n, c, h, w = shape
    length, nc = h * w, n * c
    # The layout empty_like gives the output, found once on a tensor without storage.
    y = torch.empty_like(torch.empty_strided(shape, strides, device="meta"))
    block_c, block_l = _plane_tile(c, length, x_strides[1] == 1 and c > 1)
    c_blocks = triton.cdiv(c, block_c)
    n_splits, per_split = _split_counts(target, n * c_blocks, triton.cdiv(length, block_l))
    cols_tile = _small_tile(n, c, along_n=True)
    rows_tile = _small_tile(n, c, along_n=False)
    return _Plan(
        x_strides,
        _merged_strides(shape, y.stride()),
        block_c,
        block_l,
        n_splits,
        per_split,
        per_split * block_l,
        (n * c_blocks, n_splits),
        (n * c_blocks * triton.cdiv(length, block_l),),
        (triton.cdiv(c, cols_tile[1]),),
        cols_tile,
        (triton.cdiv(n, rows_tile[0]),),
        rows_tile,
        _layout(n_splits * nc, n_splits * nc),
        _layout(nc, nc, nc, nc, nc, c, c, n, n),
        _layout(n_splits * nc, n_splits * nc, nc, nc, c, c, 6 * c),
    )


def _plan_of(x: Tensor) -> Optional[_Plan]:
    return _plan(x.shape, x.stride(), x.device, _target_programs(x.device))


def _interpreter_safe(*ts: Tensor):
    """The interpreter (CPU tensors) writes every tensor argument back after a kernel, which
    bumps its autograd version: inputs that another node saved for backward (Sparse SN's
    mixing probabilities) must go in as copies there. On the GPU they go in as they are."""
    return tuple(t if t.is_cuda else t.detach().clone() for t in ts)


def on_device_of(t: Tensor):
    """A context in which ``t``'s GPU is the current CUDA device. Triton launches on the
    current device and its current stream, not on the arguments' device: for x on cuda:1
    while cuda:0 is current (MODEL.DEVICE cuda:1 in one process) the kernels would run in
    the wrong GPU's context. A no-op when it is current already, and for CPU tensors."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


class SwitchNormTritonFunction(torch.autograd.Function):
    """SN forward and backward in eight Triton launches (see the module docstring).

    ``layer`` supplies the settings (eps, momentum, modes) and the two hooks through which a
    synchronized layer shares the BN term: ``_pool_batch_moments`` and ``_reduce_bn_grads``.
    Saved for backward (all through save_for_backward): x, the parameters and (N, C)-sized
    float32 tensors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean_weight, var_weight, layer, use_batch: bool):
        with on_device_of(x):
            return SwitchNormTritonFunction._forward(
                ctx, x, weight, bias, mean_weight, var_weight, layer, use_batch
            )

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        with on_device_of(dy):
            return SwitchNormTritonFunction._backward(ctx, dy)

    @staticmethod
    def _forward(ctx, x, weight, bias, mean_weight, var_weight, layer, use_batch: bool):
        # The kernels read the (C,)/(K,) parameters at stride 1.
        weight, bias = weight.contiguous(), bias.contiguous()
        mean_weight, var_weight = mean_weight.contiguous(), var_weight.contiguous()
        if not x.is_cuda:
            mean_weight, var_weight = _interpreter_safe(mean_weight, var_weight)
        n, c, h, w = x.shape
        length = h * w
        plan = _plan_of(x)
        part_mean, part_m2 = _carve(plan.partials, x.device)
        _plane_moments_kernel[plan.split_grid](
            x, part_mean, part_m2, n, c, length, *plan.x_strides, plan.span, plan.per_split,
            BLOCK_C=plan.block_c, BLOCK_L=plan.block_l,
            **_COMPILE_OPTIONS,
        )  # fmt: skip
        state = _carve(plan.state, x.device)
        mean_in, var_in, mu, scale, rstd = state[:5]
        ln_mean, ln_var = state[7:]

        k = 3 if layer.using_bn else 2
        count = None  # samples behind batch BN moments, None when the BN term is not the batch's
        bn_mean = bn_var = None
        if use_batch:
            bn_mean, bn_var = state[5:7]
            _batch_stats_kernel[plan.cols_grid](
                part_mean, part_m2, bn_mean, bn_var, n, c, length, plan.n_splits, plan.span,
                BLOCK_N=plan.cols_tile[0], BLOCK_C=plan.cols_tile[1],
                **_COMPILE_OPTIONS,
            )  # fmt: skip
            # _fusable is per class: the class keeps SwitchNorm2d's pooling hooks, the identity
            # with n samples (a SyncSwitchNorm2d calls its own, even with one process).
            if layer._fusable:
                count = n
            else:  # a synchronized layer's: the moments of all ranks
                local = (bn_mean.view(1, c), bn_var.view(1, c))
                pooled, total = layer._pool_batch_moments(local, n)
                if pooled is not None:
                    bn_mean, bn_var = pooled[0].reshape(c), pooled[1].reshape(c)
                    count = total
        if layer.using_bn and count is None:  # eval, frozen: the running statistics
            bn_mean, bn_var = layer.running_mean, layer.running_var
        update = count is not None
        run_mean = layer.running_mean if layer.using_bn else bn_mean
        run_var = layer.running_var if layer.using_bn else bn_var

        dummy = mean_in  # pointer for arguments a constexpr branch never reads
        _mix_rows_kernel[plan.rows_grid](
            part_mean, part_m2, weight, mean_weight, var_weight,
            dummy if bn_mean is None else bn_mean, dummy if bn_var is None else bn_var,
            dummy if run_mean is None else run_mean, dummy if run_var is None else run_var,
            mean_in, var_in, ln_mean, ln_var, mu, scale, rstd,
            n, c, length, plan.n_splits, plan.span, layer.eps, layer.momentum,
            K=k, PROBS=layer.switch_probabilities, UPDATE=update, MOVING=layer.using_moving_average,
            BLOCK_N=plan.rows_tile[0], BLOCK_C=plan.rows_tile[1],
            **_COMPILE_OPTIONS,
        )  # fmt: skip
        if update and not layer.using_moving_average:
            layer.num_batches_accumulated += 1

        y = torch.empty_like(x)  # keeps x's memory format (empty_like preserves it)
        _affine_kernel[plan.elem_grid](
            x, y, mu, scale, bias, c, length, *plan.x_strides, *plan.y_strides,
            BLOCK_C=plan.block_c, BLOCK_L=plan.block_l,
            **_COMPILE_OPTIONS,
        )  # fmt: skip
        if bn_mean is not None and count is None:
            # Eval/frozen: the running statistics themselves. The interpreter would bump their
            # version at the next launch that takes them, so it saves copies (see above).
            bn_mean, bn_var = _interpreter_safe(bn_mean, bn_var)
        # Everything backward reads is a saved tensor (None where absent): autograd checks
        # versions and saved-tensor hooks (offloading, memory accounting) see the state.
        ctx.save_for_backward(
            x, weight, mean_weight, var_weight,
            mean_in, var_in, ln_mean, ln_var, mu, scale, rstd, bn_mean, bn_var,
        )  # fmt: skip
        # One attribute (ctx attribute access is not free).
        ctx.state = (layer, count)
        return y

    @staticmethod
    def _backward(ctx, dy):
        saved = ctx.saved_tensors
        x, weight, mean_weight, var_weight = saved[:4]
        mean_in, var_in, ln_mean, ln_var, mu, scale, rstd, bn_mean, bn_var = saved[4:]
        if not x.is_cuda:
            mean_weight, var_weight = _interpreter_safe(mean_weight, var_weight)
        layer, count = ctx.state
        n, c, h, w = x.shape
        length = h * w
        # The plan of x as unpacked, not the forward's: saved-tensor hooks may give x back in
        # another layout (save_on_cpu(pin_memory=True) returns contiguous copies, of
        # channels_last or non-dense inputs too), and the passes walk it by its own strides.
        plan = _plan_of(x)
        if plan is None:  # a hook's copy that no single stride walks
            x = x.contiguous()
            plan = _plan_of(x)
        # dy usually has x's layout (the plan's strides); else it is walked by its own.
        dy_strides = plan.x_strides if dy.stride() == x.stride() else _plane_strides(dy)
        if dy_strides is None:
            dy = dy.contiguous()
            dy_strides = _plane_strides(dy)
        k = mean_weight.numel()

        g_shift, g_c, a, b, d_mean_bn, d_var_bn, logit_parts = _carve(plan.grads, x.device)
        _backward_sums_kernel[plan.split_grid](
            dy, x, mean_in, g_shift, g_c, n, c, length, *plan.x_strides, *dy_strides,
            plan.span, plan.per_split, BLOCK_C=plan.block_c, BLOCK_L=plan.block_l,
            **_COMPILE_OPTIONS,
        )  # fmt: skip

        d_weight = torch.empty_like(weight)
        d_bias = torch.empty_like(weight)
        dummy = mean_in
        bn_m = dummy if bn_mean is None else bn_mean
        bn_v = dummy if bn_var is None else bn_var
        _backward_cols_kernel[plan.cols_grid](
            g_shift, g_c, mean_in, var_in, ln_mean, ln_var, mu, scale, rstd,
            weight, mean_weight, var_weight, bn_m, bn_v, d_weight, d_bias, d_mean_bn, d_var_bn,
            logit_parts,
            n, c, plan.n_splits, K=k, PROBS=layer.switch_probabilities,
            BLOCK_N=plan.cols_tile[0], BLOCK_C=plan.cols_tile[1],
            **_COMPILE_OPTIONS,
        )  # fmt: skip
        bn_batch = count is not None
        if bn_batch and not layer._fusable:  # a synchronized layer's: summed over ranks
            d_mean_bn, d_var_bn = layer._reduce_bn_grads(d_mean_bn.view(1, c), d_var_bn.view(1, c))
            d_mean_bn, d_var_bn = d_mean_bn.reshape(c), d_var_bn.reshape(c)
            if torch.is_tensor(count):  # a synchronized layer's count, left on the GPU
                # The kernel takes the count as a scalar argument; reading this one would stall
                # the host, so the division happens here (two (C,) ops) and the kernel gets 1.
                d_mean_bn, d_var_bn = d_mean_bn / count, d_var_bn / count
                count = 1

        d_mw, d_vw = torch.empty_like(mean_weight), torch.empty_like(var_weight)
        _backward_rows_kernel[plan.rows_grid](
            g_shift, g_c, mean_in, ln_mean, mu, scale, rstd, weight, mean_weight, var_weight,
            bn_m, d_mean_bn, d_var_bn, logit_parts, a, b, d_mw, d_vw,
            n, c, length, plan.n_splits, float(count) if bn_batch else 1.0,
            K=k, PROBS=layer.switch_probabilities, BN_BATCH=bn_batch,
            BLOCK_N=plan.rows_tile[0], BLOCK_C=plan.rows_tile[1],
            **_COMPILE_OPTIONS,
        )  # fmt: skip

        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x)  # the output's layout: plan.y_strides
            _backward_dx_kernel[plan.elem_grid](
                dy, x, dx, mean_in, scale, a, b, c, length,
                *plan.x_strides, *dy_strides, *plan.y_strides,
                BLOCK_C=plan.block_c, BLOCK_L=plan.block_l,
                **_COMPILE_OPTIONS,
            )  # fmt: skip
        return dx, d_weight, d_bias, d_mw, d_vw, None, None
