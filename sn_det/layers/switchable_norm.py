"""Switchable Normalization for 4-d feature maps (Luo et al., ICLR 2019).

The layer normalises every (n, c) plane of x with a softmax-weighted mix of instance (IN),
layer (LN) and batch (BN) statistics, all derived from the per-(n, c) instance moments.

Cost model (why the code is shaped like this): every statistic is a function of the
(N, C) instance moments, so the only work proportional to N*C*H*W is
  forward:  one pass to get the instance moments, one pass to write y = x * scale + shift;
  backward: one pass over (x, dy) for the per-(n, c) sums, one pass to write dx.
Everything in between works on (N, C) tensors (sn_mixing.py, with an analytic backward).
The autograd Function below owns the large passes (sn_kernels.py: compiled on CPU, torch
ops elsewhere), and only the input x and (N, C)-sized tensors are kept for backward. On the
CPU a layer whose BN term is local runs the same compiled steps as one call per direction,
inside a C++ autograd Function (csrc/switch_norm_fused_cpu.cpp): at small maps the Python
between eight calls, and around a Python autograd Function, cost more than the math.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import sn_kernels
from .sn_mixing import (
    Mixed,
    batch_moments,
    batch_moments_ops,
    dx_coefficients,
    mix_backward,
    mix_forward,
    mix_ops,
)

__all__ = ["SwitchNorm2d", "freeze_switch_norms"]

_HALF_TYPES = (torch.float16, torch.bfloat16)

if torch.torch_version.TorchVersion(torch.__version__) >= (2, 4):

    def _autocast_enabled(device_type: str) -> bool:
        return torch.is_autocast_enabled(device_type)

else:  # torch < 2.4: one query per device kind (deprecated since 2.4)

    def _autocast_enabled(device_type: str) -> bool:
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


if hasattr(torch.compiler, "is_compiling"):
    _is_compiling = torch.compiler.is_compiling
else:  # torch < 2.3

    def _is_compiling() -> bool:
        import torch._dynamo

        return torch._dynamo.is_compiling()


# Backends, by device (see _triton_function): the Triton kernels (switch_norm_triton.py) on
# CUDA for float32/float16/bfloat16; otherwise _SwitchNormFunction, whose large passes run on
# the compiled CPU kernels on CPU and on torch ops elsewhere. TRITON_ON_CPU sends CPU tensors
# to the Triton kernels too, for tests under TRITON_INTERPRET=1 (the suite's GPU-less check).
TRITON_ON_CPU = False
_triton_module = None  # imported on first use: importing triton costs time at start-up


def _triton_function(x: Tensor):
    """The Triton autograd Function when it handles ``x``, else None."""
    global _triton_module
    if not (x.is_cuda or TRITON_ON_CPU) or x.numel() == 0 or torch.jit.is_tracing():
        return None  # N == 0 or H*W == 0: nothing to compute; the torch-ops path defines it
    if _triton_module is None:
        try:
            from . import switch_norm_triton as module
        except ImportError:  # no triton: the torch-ops path serves CUDA too
            module = False
        _triton_module = module
    if _triton_module is False or not _triton_module.supports(x):
        return None
    return _triton_module.SwitchNormTritonFunction


# CPU float32/float64 layers whose batch statistics are local run as one compiled call per
# direction in a C++ autograd Function (sn_det._C.fused_autograd, bit-identical to the staged
# path). A (2, 256, 8, 8) step took 447 us staged and 285 us with the two calls in a Python
# autograd.Function; with the Function in C++, make bench's SN/GN fixed cost fell again from
# 1.95-1.98 to 1.48-1.67. False sends them through the staged path, which
# SyncSwitchNorm2d always takes; the tests run both.
FUSED_CPU = True

# The SwitchNorm2d methods between the large passes that a subclass overrides to pool the BN
# term across processes (SyncSwitchNorm2d); a class that overrides none of them can run fused.
_STAGED_HOOKS = ("_mix", "_batch_moments", "_pool_batch_moments", "_reduce_bn_grads", "_track")
_NO_TENSOR = torch.empty(0)  # "no running statistics" for the fused kernels
# False for an editable install whose extension was built before the fused calls existed.
_FUSED_BUILT = hasattr(sn_kernels._C, "fused_autograd")


def _samples(x: Tensor) -> int:
    """The samples of (N, C, H, W) ``x`` that have statistics: N, or 0 when H * W == 0 (the
    moments of empty planes are zeros that stand for nothing; taken as a batch, they would
    pull the running statistics towards zero)."""
    return x.shape[0] if x.shape[2] * x.shape[3] > 0 else 0


class _SwitchNormFunction(torch.autograd.Function):
    """y = (x - mu) * scale + bias with (mu, scale) from the mixed per-plane moments of x.

    Forward: plane moments (one pass), the (N, C) mixing (sn_mixing), the affine (one pass).
    Backward: g_c = sum_hw(dy * (x - mean_in)) and g_shift = sum_hw(dy) (one pass), the
    analytic (N, C) backward of the mixing, then (one pass)
        dx = dy * scale + d(mean_in) / L + d(var_in) * 2 (x - mean_in) / (L - 1).
    Saved for backward (through save_for_backward, so that autograd's saved-tensor hooks see
    them and an in-place change of x, the weight or the running statistics an eval-mode BN term
    read is refused): x and the (N, C)-sized state of the mixing.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mean_weight, var_weight, layer, use_batch: bool):
        mean_in, var_in = sn_kernels.plane_moments(x)
        mixed, batch_count = layer._mix(
            mean_in, var_in, weight, bias, mean_weight, var_weight, use_batch, _samples(x)
        )
        # A fresh 4-d tensor (not a view): callers apply relu_ to it in place.
        y = sn_kernels.affine(x, mixed.mean, mixed.scale, mixed.bias)
        # The Mixed fields in order, bias left out (the backward never reads it); None entries
        # (no BN term) are kept as None by save_for_backward.
        ctx.save_for_backward(x, *mixed[:-2])
        # One attribute: every ctx attribute access goes through Function.__getattribute__.
        ctx.state = (layer, batch_count, mixed.probs)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, *state = ctx.saved_tensors
        layer, batch_count, probs = ctx.state
        mixed = Mixed(*state, None, probs)
        g_shift, g_c = sn_kernels.backward_reduce(dy, x, mixed.mean_in)
        d_mean_in, d_var_in, d_w, d_b, d_mw, d_vw, d_mean_bn, d_var_bn = mix_backward(
            mixed, g_c, g_shift
        )
        bn_grads = None
        if batch_count is not None:  # the BN term came from this batch
            bn_grads = layer._reduce_bn_grads(d_mean_bn, d_var_bn)
        dx = None
        if ctx.needs_input_grad[0]:
            a, b = dx_coefficients(
                mixed, d_mean_in, d_var_in, bn_grads, batch_count, x.shape[2] * x.shape[3]
            )
            dx = sn_kernels.backward_dx(dy, x, mixed.mean_in, mixed.scale, a, b)
        return dx, d_w, d_b, d_mw, d_vw, None, None


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
        - H*W == 1: the unbiased variance would be 0/0; the variance of a single element is
          defined as 0 (its exact value, and the only one with a finite gradient).
        - float16/bfloat16 inputs: statistics and normalisation run in float32 (E[x^2] - E[x]^2
          cancels badly in half precision); the output has the input's dtype.
    """

    _version = 2  # 1 (or absent): published layout, (1, C, 1, 1) params and (1, C, 1) buffers
    # Whether _switch_inputs() returns the mixing probabilities themselves rather than logits
    # to softmax (Sparse SN, a subclass, computes them by sparsestmax).
    switch_probabilities = False
    # Whether the class keeps SwitchNorm2d's local BN term (see _STAGED_HOOKS); subclasses
    # get their own value from __init_subclass__.
    _fusable = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._fusable = all(getattr(cls, h) is getattr(SwitchNorm2d, h) for h in _STAGED_HOOKS)

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
        else:
            # Declared as None (not saved, not in the state dict) so that TorchScript, which
            # needs every attribute the scripted forward names, sees Optional buffers.
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_accumulated", None, persistent=False)

    # ------------------------------------------------------------------ statistics
    def is_synchronized(self) -> bool:
        """Whether the BN-term moments of a training forward are shared by all ranks (then
        the running statistics are identical everywhere without further communication)."""
        return False

    def _uses_batch_statistics(self, x: Tensor) -> bool:
        """Whether the BN term comes from this batch (else from the running statistics).

        An empty batch (no samples, or empty planes) has no statistics: using the running
        ones keeps everything finite and leaves the running statistics untouched.
        """
        return self.using_bn and self.training and not self.frozen and _samples(x) > 0

    def _batch_moments(self, mean_in: Tensor, var_in: Tensor, samples: int):
        """BN-term moments of this batch from its instance moments.

        Args:
            mean_in, var_in: (N, C) per-plane means and unbiased variances.
            samples: N, or 0 when the planes are empty (their moments are placeholders).

        Returns:
            see :meth:`_pool_batch_moments`.
        """
        local = batch_moments(mean_in, var_in) if samples > 0 else None
        return self._pool_batch_moments(local, samples)

    def _pool_batch_moments(self, local: Optional[Tuple[Tensor, Tensor]], count: int):
        """The BN-term moments of everything that shares them, from this process's.

        Args:
            local: this process's batch (mean_bn, var_bn), each (1, C), or None without samples.
            count: the number of samples behind ``local``.

        Returns:
            (mean_bn, var_bn), each (1, C), and the number of samples they average over, or
            (None, 0) when there is no sample at all (possible only for a synchronized
            layer in batch-average mode, on a process without samples).
            The number is an int, or a 0-d float tensor on the moments' device where reading
            it would synchronize with the GPU (a synchronized layer's training forward).
            Identity here; a synchronized layer pools over ranks.
        """
        return (local, count) if count > 0 else (None, 0)

    def _mix(
        self, mean_in, var_in, weight, bias, mean_weight, var_weight, use_batch: bool, samples: int
    ):
        """Mix the (N, C) moments into per-plane scale/shift (see sn_mixing.mix_forward), and
        fold the batch BN moments, when the BN term took them, into the running statistics.
        ``samples``: see :meth:`_batch_moments`.

        Returns:
            the :class:`Mixed` result, and the number of samples behind the batch BN moments
            (None when the BN term is absent or comes from the running statistics; an int or
            a 0-d tensor, see :meth:`_pool_batch_moments`).
        """
        bn_moments, count = None, None
        if self.using_bn:
            if use_batch:
                bn_moments, count = self._batch_moments(mean_in, var_in, samples)
                if bn_moments is None:  # no sample anywhere: nothing to take statistics of
                    count = None
            if bn_moments is None:
                dtype = mean_in.dtype
                bn_moments = (
                    self.running_mean.to(dtype).view(1, -1),
                    self.running_var.to(dtype).view(1, -1),
                )
        mixed = mix_forward(
            mean_in,
            var_in,
            weight,
            bias,
            mean_weight,
            var_weight,
            self.eps,
            bn_moments,
            self.switch_probabilities,
        )
        if count is not None:
            self._track(mixed.mean_bn.view(-1), mixed.var_bn.view(-1))
        return mixed, count

    def _reduce_bn_grads(self, d_mean_bn: Tensor, d_var_bn: Tensor) -> Tuple[Tensor, Tensor]:
        """Gradients of the batch BN moments, summed over everything that shares them.
        Identity here; a synchronized layer sums them over ranks."""
        return d_mean_bn, d_var_bn

    @torch.no_grad()
    def _track(self, batch_mean: Tensor, batch_var: Tensor) -> None:
        """Fold this batch's BN moments (C,) into the running statistics."""
        if batch_mean.dtype != self.running_mean.dtype:  # (a no-op .to() still costs a call)
            batch_mean = batch_mean.to(self.running_mean.dtype)
            batch_var = batch_var.to(self.running_var.dtype)
        if self.using_moving_average:
            # running + (1 - m) (batch - running) = m running + (1 - m) batch, one op each.
            self.running_mean.lerp_(batch_mean, 1 - self.momentum)
            self.running_var.lerp_(batch_var, 1 - self.momentum)
        else:
            self.running_mean.add_(batch_mean)
            self.running_var.add_(batch_mean**2 + batch_var)
            self.num_batches_accumulated += 1

    @torch.jit.unused
    def switch_weights(self) -> Tuple[Tensor, Tensor]:
        """The mixing probabilities (mean, var), each (K,) with K = 3 (IN, LN, BN) or 2
        without the BN term: the softmax of the switch logits (a sparse subclass overrides)."""
        return torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)

    # ------------------------------------------------------------------ forward
    @torch.jit.unused
    def _switch_inputs(self) -> Tuple[Tensor, Tensor]:
        """What the mixing takes for the mean and variance terms: the logits here (softmax is
        applied inside); a subclass with ``switch_probabilities`` returns probabilities."""
        return self.mean_weight, self.var_weight

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._forward_scripted(x)
        return self._forward_eager(x)

    def _forward_scripted(self, x: Tensor) -> Tensor:
        """The TorchScript forward (see :meth:`_forward_ops`). A scripted SyncSwitchNorm2d
        computes its BN term from the local batch (scripting is for deployment, where layers
        run in eval mode and nothing is synchronized)."""
        return self._forward_ops(x, self.mean_weight, self.var_weight, False)

    @torch.jit.unused
    def _traceable(self, x: Tensor) -> bool:
        """Whether :meth:`_forward_ops` computes this call exactly (torch.compile takes it
        then). False only for a synchronized layer that takes statistics from all ranks."""
        return True

    @torch.jit.unused
    def _forward_compiled(self, x: Tensor) -> Tensor:
        """The forward under torch.compile: :meth:`_forward_ops`, which dynamo records as
        one graph (the compiled CPU kernels and the Triton launches are calls it cannot see
        into, so each would end the graph) and inductor fuses into its own kernels."""
        self._check_input(x)
        mean_weight, var_weight = self._switch_inputs()
        if _autocast_enabled(x.device.type):  # the (N, C) math stays in float32
            with torch.autocast(x.device.type, enabled=False):
                return self._forward_ops(x, mean_weight, var_weight, self.switch_probabilities)
        return self._forward_ops(x, mean_weight, var_weight, self.switch_probabilities)

    def _forward_ops(
        self, x: Tensor, mean_weight: Tensor, var_weight: Tensor, probs: bool
    ) -> Tensor:
        """SN as plain torch ops differentiated by autograd: the same stable statistics as
        the other paths, statistics in float32 for half-precision input. TorchScript- and
        dynamo-traceable; used by scripting and torch.compile.

        Args:
            x: (N, C, H, W).
            mean_weight, var_weight: (K,) switch logits, or probabilities when ``probs``.
        """
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError("SwitchNorm2d expects (N, C, H, W) input with C = num_features")
        n, c, h, w = x.shape
        xf = x.float() if x.dtype == torch.float16 or x.dtype == torch.bfloat16 else x
        x3 = xf.reshape(n, c, h * w)
        if x3.numel() == 0:  # no planes (N == 0) or empty ones: var_mean would warn on nothing
            mean_in, var_in = xf.new_zeros((n, c)), xf.new_zeros((n, c))
        else:
            var_in, mean_in = torch.var_mean(x3, dim=[2], correction=1 if h * w > 1 else 0)
        use_batch = self.using_bn and self.training and not self.frozen and n * h * w > 0
        mean_bn: Optional[Tensor] = None
        var_bn: Optional[Tensor] = None
        running_mean, running_var = self.running_mean, self.running_var
        if use_batch:
            mean_bn, var_bn = batch_moments_ops(mean_in, var_in)
        elif running_mean is not None and running_var is not None:
            mean_bn = running_mean.to(mean_in.dtype).view(1, c)
            var_bn = running_var.to(mean_in.dtype).view(1, c)
        scale, mean, _, _, _, _, _ = mix_ops(
            mean_in,
            var_in,
            self.weight,
            mean_weight,
            var_weight,
            self.eps,
            mean_bn,
            var_bn,
            probs,
        )
        y = (x3 - mean.unsqueeze(2)) * scale.unsqueeze(2) + self.bias.view(1, c, 1)
        if use_batch and mean_bn is not None and var_bn is not None:
            self._track_scripted(mean_bn.detach().view(c), var_bn.detach().view(c))
        return y.reshape(n, c, h, w).to(x.dtype)

    def _track_scripted(self, batch_mean: Tensor, batch_var: Tensor) -> None:
        """:meth:`_track` for TorchScript (same arithmetic)."""
        running_mean, running_var = self.running_mean, self.running_var
        count = self.num_batches_accumulated
        if running_mean is None or running_var is None or count is None:
            return
        with torch.no_grad():
            batch_mean = batch_mean.to(running_mean.dtype)
            batch_var = batch_var.to(running_var.dtype)
            if self.using_moving_average:
                running_mean.lerp_(batch_mean, 1 - self.momentum)
                running_var.lerp_(batch_var, 1 - self.momentum)
            else:
                running_mean.add_(batch_mean)
                running_var.add_(batch_mean * batch_mean + batch_var)
                count.add_(1)

    @torch.jit.unused
    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} expects (N, C, H, W) input, got {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got an input with "
                f"{x.shape[1]} channels"
            )

    @torch.jit.unused
    def _forward_eager(self, x: Tensor) -> Tensor:
        if _is_compiling() and self._traceable(x):
            return self._forward_compiled(x)
        self._check_input(x)
        params = (self.weight, self.bias, *self._switch_inputs())
        triton_fn = _triton_function(x)
        if triton_fn is not None:
            # Reads half-precision inputs as they are (float32 statistics inside the kernels).
            return triton_fn.apply(x, *params, self, self._uses_batch_statistics(x))
        in_dtype = x.dtype
        if in_dtype in _HALF_TYPES:
            x = x.float()  # statistics in fp32: E[x^2] - E[x]^2 cancels badly in half precision
        use_batch = self._uses_batch_statistics(x)

        # Under autocast the small (N, C) math must stay in fp32; entering the context costs
        # more than the rest of a small layer, so only when autocast is on. (Two calls rather
        # than `with ctx if on else nullcontext()`: torch.compile cannot trace that form.)
        if _autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                y = self._normalize(x, params, use_batch)
        else:
            y = self._normalize(x, params, use_batch)
        return y if y.dtype == in_dtype else y.to(in_dtype)

    @torch.jit.unused
    def _runs_fused(self, x: Tensor, params) -> bool:
        """Whether this call takes :meth:`_fused_forward`: compiled CPU kernels
        for ``x``, a non-empty input, a local BN term, and every tensor of ``x``'s dtype."""
        if not (FUSED_CPU and self._fusable and x.numel() > 0 and sn_kernels.on_cpu_kernels(x)):
            return False
        if not _FUSED_BUILT:
            return False
        dtype = x.dtype
        for p in params:
            if p.dtype != dtype or not p.is_cpu:
                return False
        return not self.using_bn or (
            self.running_mean.dtype == dtype and self.running_var.dtype == dtype
        )

    @torch.jit.unused
    def _fused_forward(
        self, x, weight, bias, mean_weight, var_weight, use_batch: bool, grads: bool
    ):
        """y from the compiled kernels in one call: differentiable (a C++ autograd Function whose
        backward is the fused backward) when ``grads``; with ``use_batch`` it folds the batch BN
        moments into the running statistics (as _track)."""
        if self.using_bn:
            stats = (self.running_mean, self.running_var, self.num_batches_accumulated)
        else:
            stats = (_NO_TENSOR, _NO_TENSOR, _NO_TENSOR)
        args = (x, weight, bias, mean_weight, var_weight, self.eps, *stats, use_batch)
        settings = (self.momentum, self.using_moving_average, self.switch_probabilities)
        if grads:
            return sn_kernels._C.fused_autograd(*args, *settings)
        return sn_kernels._C.fused_forward(*args, *settings)[0]

    @torch.jit.unused
    def _normalize(self, x: Tensor, params, use_batch: bool) -> Tensor:
        """The C++/torch-ops computation of SN on float32/float64 ``x``."""
        grads = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in params)
        )
        if self._runs_fused(x, params):
            return self._fused_forward(x, *params, use_batch, grads)
        if torch.jit.is_tracing() or not grads:
            # Inference, or tracing (which records plain ops, not a Python autograd
            # Function): the same passes, no backward state to keep.
            moments = sn_kernels.plane_moments(x)
            mixed, _ = self._mix(*moments, *params, use_batch, _samples(x))
            return sn_kernels.affine(x, mixed.mean, mixed.scale, mixed.bias)
        return _SwitchNormFunction.apply(x, *params, self, use_batch)

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
        # E[x^2] - E[x]^2 can round below zero for a near-constant channel: a variance is >= 0.
        self.running_var.div_(k).sub_(self.running_mean**2).clamp_(min=0)
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
