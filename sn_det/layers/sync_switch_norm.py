"""Synchronized Switchable Normalization: the BN term's statistics over all ranks.

With 8 GPUs and 2 images each, plain SN's BN term sees 2 images; the synchronized layer
computes it over all 16, each sample weighted equally. The IN and LN terms stay per sample.

Only the BN term crosses ranks, and it depends on the input only through each rank's (C,)
batch moments, so each direction costs one collective of about 2*C numbers per rank:
  forward:  [n, mean_bn, n * var_bn] of every rank gathered, then pooled as parallel
            variances (spread within ranks plus spread of the rank means) -> mean_bn, var_bn, count;
  backward: [dL/dmean_bn, dL/dvar_bn] summed over ranks (the moments are shared, so every
            rank's loss contributes to their gradient), then the same per-sample chain rule
            as the local layer (sn_mixing.bn_backward with the global count).
Everything else is SwitchNorm2d's: the same passes, parameters, buffers and checkpoints.

Why there is no hang when a rank holds no samples: whether a forward takes part in the
collective depends only on state shared by all ranks (training, frozen, using_bn), never on
the local batch size; a rank with N == 0 contributes zero sums and a zero count. A training
forward never reads the pooled count on the host (that would stall the CPU at every layer
until the GPU caught up, and forbid CUDA-graph capture): with no sample on any rank the BN
term selects the running statistics on the device, and every rank runs the backward
all-reduce. Only a rank without samples in batch-average mode (the calibration pass, or
training with using_moving_average=False) reads the count, to skip a batch empty everywhere;
all such ranks read the same gathered value, so all of them skip the backward all-reduce
together (a rank with samples knows the batch is not empty).
"""

from typing import Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .switchable_norm import SwitchNorm2d

__all__ = ["SyncSwitchNorm2d"]


class SyncSwitchNorm2d(SwitchNorm2d):
    """:class:`SwitchNorm2d` whose BN term uses the statistics of all ranks' samples.

    Same constructor arguments, parameters, buffers and state-dict layout as SwitchNorm2d,
    so checkpoints move freely between the two, plus ``process_group`` (default: the whole
    world). Without an initialised process group, or with a world size of 1, it computes
    exactly what SwitchNorm2d computes.

    Works with every torch.distributed backend (gloo on CPU, NCCL on GPU). After every
    training forward the running statistics are identical on all ranks (they are updated
    from all-reduced moments).

    Shape:
        input (N, C, H, W), output the same; N may differ between ranks, 0 included.

    Caveats:
        - Every rank must run the same SN layers in the same order in training mode (the
          same requirement as SyncBatchNorm), and a layer's output must reach the loss on
          every rank or on none, so that backward reaches the same all-reduces (detectron2's
          heads give empty batches a ``sum() * 0`` loss for this reason).
        - Evaluation mode and frozen layers use the running statistics and communicate
          nothing, so ranks may evaluate different numbers of images.
    """

    # TorchScript cannot type a ProcessGroup; the scripted forward never synchronizes.
    __jit_ignored_attributes__ = ["process_group"]

    def __init__(self, *args, process_group: Optional["dist.ProcessGroup"] = None, **kwargs):
        super().__init__(*args, **kwargs)  # SwitchNorm2d's arguments, unchanged
        self.process_group = process_group

    def _sync_group(self):
        """The process group to reduce over, or None when there is nothing to synchronize."""
        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def is_synchronized(self) -> bool:
        return self._sync_group() is not None

    def _uses_batch_statistics(self, x: Tensor) -> bool:
        if self._sync_group() is None:
            return super()._uses_batch_statistics(x)
        # Deliberately independent of x's size: a rank without samples (N == 0, or empty
        # planes, which count as none) must still join the all-reduce (an empty batch
        # anywhere is detected from the reduced count).
        return self.using_bn and self.training and not self.frozen

    def _traceable(self, x: Tensor) -> bool:
        # Statistics pooled over ranks go through collectives and their own backward, which
        # only the autograd Function path implements: torch.compile breaks the graph there.
        return not (self._sync_group() is not None and self._uses_batch_statistics(x))

    def _pool_batch_moments(self, local: Optional[Tuple[Tensor, Tensor]], count: int):
        group = self._sync_group()
        if group is None:
            return super()._pool_batch_moments(local, count)
        c = self.num_features
        # One collective: [n_r, mean_r (C), n_r * var_r (C)] from every rank, combined below
        # as parallel variances are (Chan et al.): each rank's spread around its own mean plus
        # the spread of the rank means. Summing E[x^2] instead would cancel for |mean| >> std.
        # The dtype must agree on all ranks, including those without samples: the buffers'
        # (float64 for a float64 layer), at least float32.
        dtype = torch.promote_types(self.running_mean.dtype, torch.float32)
        if local is None:
            packed = self.running_mean.new_zeros(2 * c + 1, dtype=dtype)
        else:  # three small kernels on a GPU (a fill, a product, a concatenation)
            mean, var = local[0].reshape(c).to(dtype), local[1].reshape(c).to(dtype)
            packed = torch.cat([mean.new_full((1,), count), mean, var * count])
        # Into one tensor: no per-rank outputs to copy out and stack again.
        world = dist.get_world_size(group)
        stacked = packed.new_empty(world * (2 * c + 1))
        dist.all_gather_into_tensor(stacked, packed, group=group)
        stacked = stacked.view(world, 2 * c + 1)
        counts, means, m2 = stacked[:, :1], stacked[:, 1 : c + 1], stacked[:, c + 1 :]
        samples = counts.sum()
        if local is not None:
            # Samples here, so some everywhere: the count stays on the device. Reading it
            # would stall the CPU at every layer until the GPU caught up (and forbid
            # CUDA-graph capture).
            return self._pooled(counts, means, m2, samples), samples.reshape(())
        if not self.using_moving_average:
            # No sample here, and batch-average mode adds every batch to the sums: a batch
            # without samples anywhere must be skipped, decided on the host (only ranks
            # without samples read). Integers are exact in float32 below 2^24.
            total = int(round(samples.item()))
            if total == 0:
                return None, 0
            return self._pooled(counts, means, m2, total), total
        # No sample here, moving average: no host read either. With no sample on any rank the
        # moments are the running statistics, which the moving average then leaves exactly
        # as they were (lerp(r, r, w) == r); the count is clamped to 1 so that the backward's
        # division stays finite (it scales gradients of no sample).
        total = samples.clamp(min=1.0)
        mean_bn, var_bn = self._pooled(counts, means, m2, total)
        empty = samples < 0.5
        mean_bn = torch.where(empty, self.running_mean.to(dtype).view(1, c), mean_bn)
        var_bn = torch.where(empty, self.running_var.to(dtype).view(1, c), var_bn)
        return (mean_bn, var_bn), total.reshape(())

    @staticmethod
    def _pooled(counts: Tensor, means: Tensor, m2: Tensor, total) -> Tuple[Tensor, Tensor]:
        """Pooled (mean_bn, var_bn), (1, C) each, from every rank's row of ``counts`` (R, 1),
        ``means`` (R, C) and ``m2`` (R, C) = count * var: parallel variances (Chan et al.)."""
        mean_bn = (counts * means).sum(0, keepdim=True) / total
        spread = (counts * (means - mean_bn) ** 2).sum(0, keepdim=True)
        return mean_bn, (m2.sum(0, keepdim=True) + spread) / total

    def _reduce_bn_grads(self, d_mean_bn: Tensor, d_var_bn: Tensor) -> Tuple[Tensor, Tensor]:
        group = self._sync_group()
        if group is None:
            return d_mean_bn, d_var_bn
        c = d_mean_bn.numel()
        packed = torch.cat([d_mean_bn.reshape(-1), d_var_bn.reshape(-1)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        return packed[:c].view(1, c), packed[c:].view(1, c)
