"""Build any detectron2 model with sn_det norms: ``build_model(cfg)``.

detectron2's builders (``build_resnet_fpn_backbone``, ``build_retinanet_resnet_fpn_backbone``,
``StandardROIHeads``, ``Res5ROIHeads``, ``SemSegFPNHead``, ``RetinaNetHead``, PointRend's and
DeepLab's heads, ...) read their norm from the config and pass it to ``get_norm``, which also
takes a callable. :func:`build_model` hands detectron2's ``build_model`` a view of the config
whose every norm key holds what ``get_norm`` accepts ("SN" becomes an SN factory), so every
model-zoo config takes SN with its stock builder names, and then applies what sn_det adds to a
built model. detectron2's registries and functions are left untouched.
"""

import logging

from detectron2.modeling import build_model as d2_build_model
from detectron2.modeling.backbone import ResNet
from torch import nn

from .backbone import freeze_sn_stages, zero_init_last_sn
from .norm_config import with_resolved_norms
from .retinanet import cycle_retinanet_switch_norms

__all__ = ["build_model", "finish_sn_model"]

logger = logging.getLogger(__name__)


def finish_sn_model(model: nn.Module, cfg) -> nn.Module:
    """What sn_det adds to a built model, in place (idempotent):

    - ``MODEL.SN.LAST_GAMMA``: the last SN of every residual block (backbone and C4 res5
      head) starts with weight 0, so each block starts as the identity;
    - ``MODEL.BACKBONE.FREEZE_AT``: the SN layers of the stages detectron2 froze are frozen
      too (detectron2 only turns BatchNorm into FrozenBatchNorm);
    - RetinaNet's head, shared by all FPN levels, gets SN statistics per level, as detectron2
      gives it per-level BatchNorm (see :mod:`sn_det.modeling.retinanet`).
    """
    if cfg.MODEL.SN.LAST_GAMMA:
        zero_init_last_sn(model)
    for module in model.modules():
        if isinstance(module, ResNet):
            freeze_sn_stages(module, cfg.MODEL.BACKBONE.FREEZE_AT)
    return cycle_retinanet_switch_norms(model)


def build_model(cfg) -> nn.Module:
    """detectron2's ``build_model`` with every norm key of ``cfg`` (any sn_det name such as
    "SN" or "SyncSN", or detectron2's own) resolved, then :func:`finish_sn_model`.

    Raises:
        ValueError: a norm key holds an unknown name (the message names the key).
    """
    return finish_sn_model(d2_build_model(with_resolved_norms(cfg)), cfg)
