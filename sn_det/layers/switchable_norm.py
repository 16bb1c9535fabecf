"""Switchable Normalization for 4-d feature maps (Luo et al., ICLR 2019).

The layer normalises every (n, c) plane of x with a softmax-weighted mix of instance (IN),
layer (LN) and batch (BN) statistics, all derived from the per-(n, c) instance moments.

Cost model (why the code is shaped like this): every statistic is a function of the
(N, C) instance moments, so the only work proportional to N*C*H*W is
  forward:  one pass to get the instance moments, one pass to write y = x * scale + shift;
  backward: one pass over (x, dy) for the per-(n, c) sums, one pass to write dx.
Everything in between works on (N, C) tensors, and plain autograd differentiates it. The
autograd Function below owns the large passes, and only the input x and (N, C)-sized
tensors are kept for backward.
"""

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["SwitchNorm2d", "instance_moments", "freeze_switch_norms"]

# Mixer: (mean_in, var_in, weight, bias, mean_weight, var_weight)
#   -> (scale (N, C), shift (N, C), batch_mean (C,) or empty, batch_var (C,) or empty)
Mixer = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor], Tuple[Tensor, ...]]

_HALF_TYPES = (torch.float16, torch.bfloat16)


def instance_moments(x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-(n, c) mean and unbiased variance in one pass.

    Args:
        x: (N, C, L) with L = H*W.

    Returns:
        mean_in, var_in: (N, C) each. ``var_in`` divides by L - 1 as the published layer
        does; for L == 1 that would be 0/0, so the variance of a single element is defined
        as 0 there (its exact value, and the only one with a finite gradient).
    """
    var, mean = torch.var_mean(x, dim=2, correction=1 if x.shape[2] > 1 else 0)
    return mean, var


def _planes(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, C, H*W) view (explicit sizes: -1 is ambiguous when N == 0)."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h * w)


def _per_plane(t: Tensor) -> Tensor:
    """(N, C) -> (N, C, 1, 1), to broadcast over the planes of a 4-d tensor."""
    return t[:, :, None, None]


class _SwitchNormFunction(torch.autograd.Function):
    """y = x * scale + shift with (scale, shift) = mixer(instance_moments(x), params).

    Backward: with g_scale = sum_hw(dy * x) and g_shift = sum_hw(dy), autograd through the
    small mixer graph gives d(mean_in), d(var_in) and the parameter gradients; then
        dx = dy * scale + d(mean_in) / L + d(var_in) * 2 (x - mean_in) / (L - 1).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean_weight, var_weight, mixer: Mixer):
        x3 = _planes(x)
        with torch.no_grad():
            mean_in, var_in = instance_moments(x3)
        needs_grad = any(ctx.needs_input_grad[:5])
        # Build the (N, C)-sized mixing graph on detached leaves; backward differentiates it
        # with autograd.grad, so the mixing formula exists in exactly one place (the mixer),
        # and collectives inside it (SyncSwitchNorm2d) run once in forward and once in backward.
        with torch.enable_grad() if needs_grad else torch.no_grad():
            leaves = [
                t.detach().requires_grad_(needs_grad)
                for t in (mean_in, var_in, weight, bias, mean_weight, var_weight)
            ]
            scale, shift, batch_mean, batch_var = mixer(*leaves)
        # Written 4-d (not as a view of the 3-d planes): callers apply relu_ to it in place.
        y = torch.addcmul(_per_plane(shift.detach()), x, _per_plane(scale.detach()))
        if needs_grad:
            ctx.save_for_backward(x)
            ctx.graph = (leaves, scale, shift)
        ctx.mark_non_differentiable(batch_mean, batch_var)
        return y, batch_mean, batch_var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _batch_mean_grad, _batch_var_grad):
        (x,) = ctx.saved_tensors
        leaves, scale, shift = ctx.graph
        x3, dy3 = _planes(x), _planes(dy)
        n, c, length = x3.shape

        g_shift = dy3.sum(2)
        # Batched dot product per (n, c) row: no N*C*L temporary as (dy3 * x3).sum(2) would make.
        g_scale = torch.matmul(dy3.unsqueeze(2), x3.unsqueeze(3)).view(n, c)
        wanted = [True, True] + list(ctx.needs_input_grad[1:5])
        grads = torch.autograd.grad(
            (scale, shift),
            [t for t, w in zip(leaves, wanted) if w],
            (g_scale, g_shift),
            allow_unused=True,
            # The mixing graph is (N, C)-sized; keep it so backward(retain_graph=True) can rerun.
            retain_graph=True,
        )
        it = iter(grads)
        d_mean_in, d_var_in, d_w, d_b, d_mw, d_vw = [next(it) if w else None for w in wanted]

        dx = None
        if ctx.needs_input_grad[0]:
            mean_in = leaves[0].detach()
            if length > 1 and d_var_in is not None:
                a = d_var_in * (2.0 / (length - 1))
            else:  # L == 1: var_in is the constant 0 (see instance_moments)
                a = torch.zeros_like(mean_in)
            d_mean = d_mean_in if d_mean_in is not None else torch.zeros_like(mean_in)
            b = d_mean / length - a * mean_in
            dx = torch.addcmul(_per_plane(b), x, _per_plane(a))
            dx.addcmul_(dy, _per_plane(scale.detach()))
        return dx, d_w, d_b, d_mw, d_vw, None


class SwitchNorm2d(nn.Module):
    """Switchable Normalization over (N, C, H, W) inputs, as in the published checkpoints.

    With mean_in[n, c], var_in[n, c] the per-plane mean and unbiased variance::

        mean_ln[n] = mean_c mean_in           var_ln[n] = mean_c (var_in + mean_in^2) - mean_ln^2
        mean_bn[c] = mean_n mean_in           var_bn[c] = mean_n (var_in + mean_in^2) - mean_bn^2
        mean = sum_k softmax(mean_weight)_k mean_k,  var = sum_k softmax(var_weight)_k var_k
        y = (x - mean) / sqrt(var + eps) * weight + bias

    k runs over (IN, LN, BN), or (IN, LN) with ``using_bn=False``. In eval mode, or when
    frozen, the BN term uses ``running_mean``/``running_var``.

    Args:
        num_features: C.
        eps: added to the mixed variance.
        momentum: weight of the OLD running value, ``running = m * running + (1 - m) * batch``
            (the SN papers' convention: PyTorch BatchNorm's momentum=0.1 is 0.9 here).
        using_moving_average: False switches to batch-average mode: every training forward
            adds mean_bn to ``running_mean`` and mean_bn^2 + var_bn to ``running_var``, and
            :meth:`finalize_batch_average` turns K such sums into pooled statistics.
        using_bn: include the BN term (False for one image per GPU, where BN equals IN).
        last_gamma: initialise ``weight`` to zeros (for the last norm of a residual branch).

    Shape:
        input (N, C, H, W), output the same. Parameters ``weight``/``bias`` (C,),
        ``mean_weight``/``var_weight`` (3,) or (2,) holding the logits before the softmax,
        buffers ``running_mean``/``running_var`` (C,) (only with ``using_bn``). Published state
        dicts with shapes (1, C, 1, 1) and (1, C, 1) load too.

    Caveats (defined behaviour rather than NaN):
        - N == 0 gives an empty output and leaves the running statistics untouched.
        - H*W == 1: the instance variance is defined as 0 (see :func:`instance_moments`).
        - float16/bfloat16 inputs: statistics and normalisation run in float32 (E[x^2] - E[x]^2
          cancels badly in half precision); the output has the input's dtype.
    """

    _version = 2  # 1 (or absent): published layout, (1, C, 1, 1) params and (1, C, 1) buffers

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.997,
        using_moving_average: bool = True,
        using_bn: bool = True,
        last_gamma: bool = False,
    ):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"momentum is the weight of the old running value, in [0, 1]: {momentum}"
            )
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.using_moving_average = using_moving_average
        self.using_bn = using_bn
        self.last_gamma = last_gamma
        self.frozen = False
        init_weight = torch.zeros if last_gamma else torch.ones
        self.weight = nn.Parameter(init_weight(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        num_terms = 3 if using_bn else 2
        self.mean_weight = nn.Parameter(torch.ones(num_terms))
        self.var_weight = nn.Parameter(torch.ones(num_terms))
        if using_bn:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.zeros(num_features))
            # Batch-average mode: how many batches the running sums hold. Not saved: the
            # published state dicts have no such key, and finalising happens in-process.
            self.register_buffer(
                "num_batches_accumulated", torch.zeros((), dtype=torch.long), persistent=False
            )

    # ------------------------------------------------------------------ statistics
    def _uses_batch_statistics(self, x: Tensor) -> bool:
        """Whether the BN term comes from this batch (else from the running statistics).

        An empty batch has no statistics: using the running ones keeps everything finite
        and leaves the running statistics untouched.
        """
        return self.using_bn and self.training and not self.frozen and x.shape[0] > 0

    def _batch_moments(self, mean_in: Tensor, sq_in: Tensor) -> Tuple[Tensor, Tensor]:
        """BN-term moments from instance moments.

        Args:
            mean_in: (N, C) per-plane means; sq_in: (N, C) per-plane E[x^2] (var_in + mean_in^2).

        Returns:
            mean_bn, var_bn: (1, C). Overridden by the synchronized layer.
        """
        mean_bn = mean_in.mean(0, keepdim=True)
        var_bn = sq_in.mean(0, keepdim=True) - mean_bn**2
        return mean_bn, var_bn

    def _mix(self, mean_in, var_in, weight, bias, mean_weight, var_weight, use_batch: bool):
        """Mix IN/LN/BN moments and fold them with the affine into per-(n, c) scale/shift.

        All tensors here are (N, C) or smaller; this is plain differentiable torch code.

        Returns:
            scale, shift: (N, C), so that y = x * scale + shift;
            batch_mean, batch_var: (C,) BN moments of this batch (empty when not used).
        """
        sq_in = var_in + mean_in**2
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = sq_in.mean(1, keepdim=True) - mean_ln**2
        means, variances = [mean_in, mean_ln], [var_in, var_ln]
        batch_mean = batch_var = mean_in.new_empty(0)
        if self.using_bn:
            if use_batch:
                mean_bn, var_bn = self._batch_moments(mean_in, sq_in)
                batch_mean, batch_var = mean_bn.detach().view(-1), var_bn.detach().view(-1)
            else:
                mean_bn = self.running_mean.to(mean_in.dtype).view(1, -1)
                var_bn = self.running_var.to(mean_in.dtype).view(1, -1)
            means.append(mean_bn)
            variances.append(var_bn)
        mean_mix = torch.softmax(mean_weight, 0)
        var_mix = torch.softmax(var_weight, 0)
        mean = sum(mean_mix[k] * means[k] for k in range(len(means)))
        var = sum(var_mix[k] * variances[k] for k in range(len(variances)))
        scale = weight * torch.rsqrt(var + self.eps)
        shift = bias - mean * scale
        return scale, shift, batch_mean, batch_var

    @torch.no_grad()
    def _track(self, batch_mean: Tensor, batch_var: Tensor) -> None:
        """Fold this batch's BN moments (C,) into the running statistics."""
        batch_mean = batch_mean.to(self.running_mean.dtype)
        batch_var = batch_var.to(self.running_var.dtype)
        if self.using_moving_average:
            self.running_mean.mul_(self.momentum).add_(batch_mean, alpha=1 - self.momentum)
            self.running_var.mul_(self.momentum).add_(batch_var, alpha=1 - self.momentum)
        else:
            self.running_mean.add_(batch_mean)
            self.running_var.add_(batch_mean**2 + batch_var)
            self.num_batches_accumulated += 1

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects (N, C, H, W) input, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got an input with {x.shape[1]} channels"
            )
        in_dtype = x.dtype
        if in_dtype in _HALF_TYPES:
            x = x.float()  # statistics in fp32: E[x^2] - E[x]^2 cancels badly in half precision
        use_batch = self._uses_batch_statistics(x)

        params = (self.weight, self.bias, self.mean_weight, self.var_weight)

        def mixer(*leaves):
            return self._mix(*leaves, use_batch=use_batch)

        with torch.autocast(x.device.type, enabled=False):
            if torch.jit.is_tracing() or not (
                torch.is_grad_enabled()
                and (x.requires_grad or any(p.requires_grad for p in params))
            ):
                # Inference (or tracing, which cannot record a Python callable): the same two
                # passes as plain ops; no backward state to keep.
                scale, shift, batch_mean, batch_var = mixer(*instance_moments(_planes(x)), *params)
                y = torch.addcmul(_per_plane(shift), x, _per_plane(scale))
            else:
                y, batch_mean, batch_var = _SwitchNormFunction.apply(x, *params, mixer)
        if use_batch:
            self._track(batch_mean, batch_var)
        return y.to(in_dtype)

    # ------------------------------------------------------------------ batch average
    @torch.no_grad()
    def reset_batch_average(self) -> None:
        """Zero the running sums before accumulating batches in batch-average mode."""
        self._require_batch_average_mode()
        self.running_mean.zero_()
        self.running_var.zero_()
        self.num_batches_accumulated.zero_()

    @torch.no_grad()
    def finalize_batch_average(self) -> int:
        """Turn the K accumulated batches into final running statistics.

        running_mean = sum_k mean_k / K and running_var = sum_k (mean_k^2 + var_k) / K -
        running_mean^2: the pooled variance of all K batches. Resets the batch count.

        Returns:
            K, the number of batches that went into the statistics.
        """
        self._require_batch_average_mode()
        k = int(self.num_batches_accumulated)
        if k == 0:
            raise RuntimeError(
                "finalize_batch_average: no training-mode forward has been accumulated "
                "since the last reset"
            )
        self.running_mean.div_(k)
        self.running_var.div_(k).sub_(self.running_mean**2)
        self.num_batches_accumulated.zero_()
        return k

    def _require_batch_average_mode(self) -> None:
        if not self.using_bn:
            raise RuntimeError(
                "this SwitchNorm2d has no BN term (using_bn=False), so no statistics"
            )
        if self.using_moving_average:
            raise RuntimeError(
                "batch averaging needs using_moving_average=False (set it on the layer first)"
            )

    # ------------------------------------------------------------------ freezing
    def freeze(self) -> "SwitchNorm2d":
        """Fix this layer, as FrozenBatchNorm2d fixes BN: no parameter trains and the BN term
        always uses the running statistics, in train and eval mode alike. IN and LN are still
        computed from the input (they have no stored statistics)."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    # ------------------------------------------------------------------ checkpoints
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Published checkpoints store weight/bias as (1, C, 1, 1) and running stats as
        # (1, C, 1); squeeze exactly those layouts and leave every other mismatch to the
        # standard size check, so a wrong channel count still fails loudly.
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = prefix + name
            value = state_dict.get(key)
            if value is None or value.dim() <= 1:
                continue
            published = (
                (1, self.num_features, 1, 1)
                if name in ("weight", "bias")
                else (1, self.num_features, 1)
            )
            if tuple(value.shape) == published:
                state_dict[key] = value.reshape(self.num_features)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        s = (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"using_bn={self.using_bn}, using_moving_average={self.using_moving_average}"
        )
        if self.last_gamma:
            s += ", last_gamma=True"
        if self.frozen:
            s += ", frozen=True"
        return s


def freeze_switch_norms(module: nn.Module) -> nn.Module:
    """Freeze every SwitchNorm2d inside ``module`` (see :meth:`SwitchNorm2d.freeze`).

    The SN counterpart of ``FrozenBatchNorm2d.convert_frozen_batchnorm``, applied in place.
    """
    for m in module.modules():
        if isinstance(m, SwitchNorm2d):
            m.freeze()
    return module
