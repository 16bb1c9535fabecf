"""Sparse Switchable Normalization (SSN) for sn_det: the norm names "SSN" and "SyncSSN",
the sparsestmax radius schedule, its training hook and trainer. Importing registers the
names."""

import functools

from sn_det.layers import register_norm
from sn_det.layers.norm import sn_kwargs

from .config import add_sparse_sn_config
from .hooks import SparsestMaxRadius, radius_at, sparse_layers
from .layers import SparseSwitchNorm2d, SyncSparseSwitchNorm2d
from .sparsestmax import sparsemax, sparsestmax, vertex_radius
from .trainer import SSNTrainer

__all__ = [
    "add_sparse_sn_config",
    "SparsestMaxRadius",
    "SSNTrainer",
    "SparseSwitchNorm2d",
    "SyncSparseSwitchNorm2d",
    "radius_at",
    "sparse_layers",
    "sparsemax",
    "sparsestmax",
    "vertex_radius",
]


@register_norm("SSN")
def _sparse_switch_norm(cfg):
    return functools.partial(SparseSwitchNorm2d, **sn_kwargs(cfg))


@register_norm("SyncSSN")
def _sync_sparse_switch_norm(cfg):
    return functools.partial(SyncSparseSwitchNorm2d, **sn_kwargs(cfg))
