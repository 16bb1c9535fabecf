"""Importance ratios: how much each SN layer relies on IN, LN and BN statistics.

A layer's shares are its mixing probabilities (``switch_weights()``: the softmax of its
``mean_weight`` (for the mean) and ``var_weight`` (for the variance) logits, a Sparse SN
layer's sparsestmax of them): the weights of its IN/LN/BN mix. Layers are listed in network
order and grouped by the part of a detectron2 R-CNN they belong to.
"""

import re
from typing import List, NamedTuple, Tuple

import torch
from torch import nn

from ..layers import SwitchNorm2d

__all__ = ["GROUPS", "TERMS", "LayerImportance", "layer_group", "importance_ratios"]

TERMS = ("IN", "LN", "BN")
# The parts of a model, in the order data flows through them.
GROUPS = (
    "stem",
    "res2",
    "res3",
    "res4",
    "res5",
    "FPN",
    "res5 head",
    "box head",
    "mask head",
    "other",
)


class LayerImportance(NamedTuple):
    name: str  # module name, without a DistributedDataParallel "module." prefix
    group: str  # one of GROUPS
    mean: Tuple[float, float, float]  # shares of IN, LN, BN in the mixed mean (BN 0 if absent)
    var: Tuple[float, float, float]  # the same for the mixed variance


def layer_group(name: str) -> str:
    """The part of a detectron2 R-CNN a module name belongs to (one of :data:`GROUPS`)."""
    name = re.sub(r"^(backbone\.bottom_up\.|backbone\.)", "", name)
    if name.startswith("stem"):
        return "stem"
    m = re.match(r"res([2-5])\.", name)
    if m:
        return f"res{m.group(1)}"
    if name.startswith("fpn_"):
        return "FPN"
    for prefix, group in (
        ("roi_heads.res5.", "res5 head"),
        ("roi_heads.box_head.", "box head"),
        ("roi_heads.mask_head.", "mask head"),
    ):
        if name.startswith(prefix):
            return group
    return "other"


def _shares(probs: torch.Tensor) -> Tuple[float, float, float]:
    p = probs.detach().double().tolist()
    return tuple(p) if len(p) == 3 else (p[0], p[1], 0.0)


def importance_ratios(model: nn.Module) -> List[LayerImportance]:
    """IN/LN/BN shares of every SN layer of ``model``, grouped as in :data:`GROUPS` and in
    network (module registration) order within a group. Layers sharing their switch logits
    (the per-level copies of a :class:`CycleSwitchNorm`) are listed once, by the first name."""
    rows = []
    seen = set()
    for name, m in model.named_modules():
        if isinstance(m, SwitchNorm2d) and id(m.mean_weight) not in seen:
            seen.add(id(m.mean_weight))
            name = name[len("module.") :] if name.startswith("module.") else name
            mean_p, var_p = m.switch_weights()  # softmax, or a sparse layer's sparsestmax
            rows.append(LayerImportance(name, layer_group(name), _shares(mean_p), _shares(var_p)))
    return sorted(rows, key=lambda r: GROUPS.index(r.group))  # stable: keeps module order
