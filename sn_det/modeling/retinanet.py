"""SN in RetinaNet's head: learned parameters shared by the FPN levels, BN-term statistics
per level.

detectron2's ``RetinaNetHead`` runs one conv tower over every FPN level (P3-P7). With
``MODEL.RETINANET.NORM: "BN"`` it gives each norm one set of statistics per level
(``CycleBatchNormList``, "domain-specific BN"), because the levels' statistics differ and a
single running average over all of them matches none at test time. Any other norm is shared
as it is, which is right for GN but not for SN's BN term, whose running statistics have the
same problem as BatchNorm's. :class:`CycleSwitchNorm` is SN's counterpart of
``CycleBatchNormList``.
"""

import copy

from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from torch import nn

from ..layers import SwitchNorm2d

__all__ = ["CycleSwitchNorm", "cycle_switch_norms", "cycle_retinanet_switch_norms"]


class CycleSwitchNorm(nn.ModuleList):
    """``length`` SN layers sharing ``weight``, ``bias`` and the switch logits, each with its
    own running statistics; the k-th call uses layer ``k % length``.

    As with ``CycleBatchNormList``, the caller must call it a multiple of ``length`` times per
    forward, in the same order of domains every time (RetinaNetHead calls its towers once per
    FPN level, in level order). The parameters are the same ``nn.Parameter`` objects in every
    layer, so optimizers, DDP and ``model.parameters()`` see each once.

    Shape: (N, C, H, W) -> (N, C, H, W), as :class:`SwitchNorm2d`.
    """

    def __init__(self, norm: SwitchNorm2d, length: int):
        layers = [norm]
        for _ in range(length - 1):
            layer = copy.deepcopy(norm)
            for name, param in norm.named_parameters(recurse=False):
                setattr(layer, name, param)  # tie: one parameter, several statistics
            layers.append(layer)
        super().__init__(layers)
        self._pos = 0

    def forward(self, x):
        ret = self[self._pos](x)
        self._pos = (self._pos + 1) % len(self)
        return ret

    def extra_repr(self) -> str:
        return f"length={len(self)}"


def cycle_switch_norms(head: nn.Module) -> nn.Module:
    """Replace, in place, every SN layer of a detectron2 ``RetinaNetHead``'s ``cls_subnet``
    and ``bbox_subnet`` by a :class:`CycleSwitchNorm` over its FPN levels. SN layers without
    a BN term (``using_bn=False``) have no statistics to separate and stay shared."""
    levels = head._num_features
    for tower in (head.cls_subnet, head.bbox_subnet):
        for i, layer in enumerate(tower):
            if isinstance(layer, SwitchNorm2d) and layer.using_bn and levels > 1:
                tower[i] = CycleSwitchNorm(layer, levels)
    return head


def cycle_retinanet_switch_norms(model: nn.Module) -> nn.Module:
    """:func:`cycle_switch_norms` on every ``RetinaNetHead`` of ``model``, in place (the step
    a model built outside :func:`sn_det.modeling.build_model`, e.g. from a LazyConfig,
    needs)."""
    for module in model.modules():
        if isinstance(module, RetinaNetHead):
            cycle_switch_norms(module)
    return model
