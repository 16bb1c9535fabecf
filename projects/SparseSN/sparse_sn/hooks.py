"""The training hook that drives Sparse SN's radius."""

from detectron2.engine import HookBase
from torch import nn

from .layers import _SparseSwitch
from .sparsestmax import vertex_radius

__all__ = ["SparsestMaxRadius", "radius_at", "sparse_layers"]


def sparse_layers(model: nn.Module):
    """(name, layer) of every Sparse SN layer in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _SparseSwitch)]


def radius_at(iteration: int, cfg) -> float:
    """The schedule's radius fraction (of the vertex distance) at ``iteration``."""
    start, end = (f * cfg.SOLVER.MAX_ITER for f in cfg.MODEL.SSN.RAMP)
    if iteration <= start:
        frac = 0.0
    elif iteration >= end:
        frac = 1.0
    else:
        frac = (iteration - start) / (end - start)
    return frac * cfg.MODEL.SSN.RADIUS_MAX


class SparsestMaxRadius(HookBase):
    """Before every step, set the radius of every Sparse SN layer from the iteration (so
    resuming restores the schedule), and every FIX_PERIOD steps fix the one-hot choices."""

    def __init__(self, cfg):
        self.cfg = cfg

    def before_step(self):
        it = self.trainer.iter
        layers = sparse_layers(self.trainer.model)
        frac = radius_at(it, self.cfg)
        for _, m in layers:
            m.radius.fill_(frac * vertex_radius(m.mean_weight.numel()))
        if it % self.cfg.MODEL.SSN.FIX_PERIOD == 0 or it == self.trainer.max_iter - 1:
            fixed = sum(m.fix_one_hot_choices() for _, m in layers)
            storage = self.trainer.storage
            share = fixed / max(2 * len(layers), 1)
            storage.put_scalar("ssn/fixed_choices", share, smoothing_hint=False)
            storage.put_scalar("ssn/radius_fraction", frac, smoothing_hint=False)
