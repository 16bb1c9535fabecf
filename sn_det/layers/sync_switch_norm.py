"""Synchronized Switchable Normalization: the BN term's statistics over all ranks.

With 8 GPUs and 2 images each, plain SN's BN term sees 2 images; the synchronized layer
computes it over all 16, each sample weighted equally. The IN and LN terms stay per sample.

Only the BN term crosses ranks, and it depends on the input only through two (C,) sums, so
each direction costs one all-reduce of 2*C + 1 numbers:
  forward:  [sum_n mean_in, sum_n E[x^2], n] summed over ranks -> mean_bn, var_bn, count;
  backward: [dL/dmean_bn, dL/dvar_bn] summed over ranks (the moments are shared, so every
            rank's loss contributes to their gradient), then the same per-sample chain rule
            as the local layer (sn_mixing.bn_backward with the global count).
Everything else is SwitchNorm2d's: the same passes, parameters, buffers and checkpoints.

Why there is no hang when a rank holds no samples: whether a forward takes part in the
collective depends only on state shared by all ranks (training, frozen, using_bn), never on
the local batch size; a rank with N == 0 contributes zero sums and a zero count. Whether the
batch had any sample at all is read from the all-reduced count, so every rank reaches the
same decision and the backward all-reduce happens on all ranks or on none.
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
        # Deliberately independent of x.shape[0]: a rank without samples must still join
        # the all-reduce (an empty batch anywhere is detected from the reduced count).
        return self.using_bn and self.training and not self.frozen

    def _batch_moments(self, mean_in: Tensor, var_in: Tensor):
        group = self._sync_group()
        if group is None:
            return super()._batch_moments(mean_in, var_in)
        n, c = mean_in.shape
        # One collective: the two (C,) sums and this rank's sample count.
        sq_in = torch.addcmul(var_in, mean_in, mean_in)  # per-plane E[x^2]
        packed = torch.cat([mean_in.sum(0), sq_in.sum(0), mean_in.new_full((1,), float(n))])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        count = int(round(packed[2 * c].item()))  # integers are exact in float32 below 2^24
        if count == 0:
            return None, 0
        mean_bn = (packed[:c] / count).view(1, c)
        var_bn = (packed[c : 2 * c] / count).view(1, c) - mean_bn * mean_bn
        return (mean_bn, var_bn), count

    def _reduce_bn_grads(self, d_mean_bn: Tensor, d_var_bn: Tensor) -> Tuple[Tensor, Tensor]:
        group = self._sync_group()
        if group is None:
            return d_mean_bn, d_var_bn
        c = d_mean_bn.numel()
        packed = torch.cat([d_mean_bn.reshape(-1), d_var_bn.reshape(-1)])
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        return packed[:c].view(1, c), packed[c:].view(1, c)
