"""The Sparse SN trainer: sn_det's Trainer with the sparsestmax radius schedule."""

from sn_det.engine import Trainer

from .hooks import SparsestMaxRadius

__all__ = ["SSNTrainer"]


class SSNTrainer(Trainer):
    """sn_det's Trainer plus the radius schedule (first, so the radius is set before the
    step's forward)."""

    def build_hooks(self):
        return [SparsestMaxRadius(self.cfg)] + super().build_hooks()
