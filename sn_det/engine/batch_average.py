"""Batch-average statistics for SN: SN's counterpart of detectron2's PreciseBN.

The BN term of a trained SN model normally evaluates with moving averages of the batch
moments. Batch averaging replaces them with the pooled statistics of K training batches::

    running_mean = mean_k mean_bn_k
    running_var  = mean_k (var_bn_k + mean_bn_k^2) - running_mean^2

(SN_FACTS.md; what SwitchNorm2d's batch-average mode accumulates and finalises). K forwards
in training mode run without gradients; only the SN layers' running statistics change.
"""

import logging
from typing import Dict, Iterator, List, Tuple

import detectron2.utils.comm as comm
import torch
import torch.distributed as dist
from detectron2.utils.events import EventStorage
from torch import nn

from ..layers import SwitchNorm2d

__all__ = ["batch_average_layers", "recompute_sn_batch_statistics"]

logger = logging.getLogger(__name__)


def batch_average_layers(model: nn.Module) -> List[Tuple[str, SwitchNorm2d]]:
    """(name, layer) of every SN layer whose BN term can be batch-averaged: it has a BN
    term and is not frozen (a frozen layer never takes batch statistics)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, SwitchNorm2d) and m.using_bn and not m.frozen
    ]


def _pool_across_ranks(layers: List[Tuple[str, SwitchNorm2d]]) -> None:
    """Sum the accumulated sums and batch counts of unsynchronized layers over all ranks, so
    the finalised statistics pool every rank's batches and are identical everywhere.
    Synchronized layers already hold identical sums (each batch's moments were global)."""
    if comm.get_world_size() == 1:
        return
    for _, m in layers:
        if m.is_synchronized():
            continue
        count = m.num_batches_accumulated.to(m.running_mean.dtype).view(1)
        packed = torch.cat([m.running_mean, m.running_var, count])
        dist.all_reduce(packed)
        c = m.num_features
        m.running_mean.copy_(packed[:c])
        m.running_var.copy_(packed[c : 2 * c])
        m.num_batches_accumulated.fill_(int(round(packed[2 * c].item())))


@torch.no_grad()
def recompute_sn_batch_statistics(
    model: nn.Module, data: Iterator, num_iter: int, log_period: int = 20
) -> Dict[str, int]:
    """Replace the BN-term running statistics of every SN layer by batch-average statistics.

    Runs ``model(next(data))`` ``num_iter`` times in training mode without gradients. Every
    rank must call this with the same ``num_iter`` (the statistics are pooled over ranks).
    Other layers are left exactly as they were: their buffers (e.g. BatchNorm's running
    statistics, which a training forward would update) are restored afterwards, and the
    model's train/eval mode too. On an exception the SN statistics are restored as well.

    Args:
        model: any module (a detectron2 model, possibly wrapped in DistributedDataParallel).
        data: an iterator of inputs for ``model`` (a detectron2 training data loader).
        num_iter: K, the number of forwards.
        log_period: log progress every this many forwards.

    Returns:
        {layer name: number of batches behind its statistics}. A layer that saw no sample in
        any of the K batches (e.g. a mask head without foreground boxes) keeps its previous
        statistics and reports 0.
    """
    if num_iter < 1:
        raise ValueError(f"batch averaging needs at least one batch, got num_iter={num_iter}")
    layers = batch_average_layers(model)
    if not layers:
        logger.info("No SN layer with a trainable BN term: batch averaging has nothing to do.")
        return {}
    sn_ids = {id(m) for _, m in layers}
    # Everything a training forward may change outside the SN layers, to put back.
    other_buffers = [
        (b, b.detach().clone())
        for mod in model.modules()
        if id(mod) not in sn_ids
        for b in mod.buffers(recurse=False)
    ]
    saved = [
        (m, m.using_moving_average, m.running_mean.clone(), m.running_var.clone())
        for _, m in layers
    ]
    was_training = model.training
    counts: Dict[str, int] = {}
    try:
        for _, m in layers:
            m.using_moving_average = False
            m.reset_batch_average()
        model.train()
        logger.info(f"SN batch averaging: {num_iter} training-mode forwards without grad ...")
        with EventStorage():  # detectron2 models log to a storage in training mode; discard it
            for i in range(1, num_iter + 1):
                model(next(data))
                if i % log_period == 0 or i == num_iter:
                    logger.info(f"SN batch averaging: {i}/{num_iter} batches")
        _pool_across_ranks(layers)
        for (name, m), (_, _, mean, var) in zip(layers, saved):
            if int(m.num_batches_accumulated) == 0:  # no statistics to replace the old ones
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                counts[name] = 0
            else:
                counts[name] = m.finalize_batch_average()
    except BaseException:
        for m, _, mean, var in saved:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        raise
    finally:
        for m, moving, _, _ in saved:
            m.using_moving_average = moving
            m.num_batches_accumulated.zero_()
        for buf, value in other_buffers:
            buf.copy_(value)
        model.train(was_training)
    unseen = [name for name, k in counts.items() if k == 0]
    if unseen:
        logger.warning(
            f"SN batch averaging: {len(unseen)} layer(s) saw no sample in {num_iter} batches "
            f"and keep their previous statistics: {', '.join(unseen)}"
        )
    logger.info(f"SN batch averaging: recomputed {len(layers) - len(unseen)} SN layer(s).")
    return counts
