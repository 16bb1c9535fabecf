"""ResNet and ResNet-FPN backbones whose norms may be any sn_det norm ("SN", ...).

These are detectron2's own ``ResNet`` and ``FPN``, built by detectron2's own builders from a
config view with resolved norms (see :func:`with_resolved_norms`). Since
:func:`sn_det.modeling.build_model` builds every model from that view, detectron2's stock
names (``build_resnet_fpn_backbone``, ...) take SN as well; the ``build_sn_*`` names stay for
configs that name them and for models built by detectron2's own ``build_model``. What sn_det
adds:
- ``MODEL.BACKBONE.FREEZE_AT`` really freezes SN stages: detectron2 turns only BatchNorm into
  FrozenBatchNorm, so an SN layer in a frozen stage would keep updating its statistics;
- ``MODEL.SN.LAST_GAMMA`` zero-initialises the last SN of every residual branch.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet
from detectron2.modeling.backbone.fpn import (
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, build_resnet_backbone
from torch import nn

from ..layers import SwitchNorm2d, freeze_switch_norms
from .norm_config import with_resolved_norms

__all__ = [
    "build_sn_resnet_backbone",
    "build_sn_resnet_fpn_backbone",
    "build_sn_retinanet_resnet_fpn_backbone",
    "freeze_sn_stages",
    "zero_init_last_sn",
]


def freeze_sn_stages(resnet: ResNet, freeze_at: int) -> ResNet:
    """Freeze the SN layers of the stages ``ResNet.freeze(freeze_at)`` froze (stem = stage 1)."""
    if freeze_at >= 1:
        freeze_switch_norms(resnet.stem)
    for idx, stage in enumerate(resnet.stages, start=2):
        if freeze_at >= idx:
            freeze_switch_norms(stage)
    return resnet


def zero_init_last_sn(module: nn.Module) -> nn.Module:
    """Zero the weight (gamma) of the last SN of every residual block in ``module``, so each
    block starts as the identity (the published ``last_gamma``)."""
    for block in module.modules():
        last = None
        if isinstance(block, BottleneckBlock):
            last = block.conv3.norm
        elif isinstance(block, BasicBlock):
            last = block.conv2.norm
        if isinstance(last, SwitchNorm2d):
            nn.init.zeros_(last.weight)
            last.last_gamma = True
    return module


def _finish_resnet(resnet: ResNet, cfg) -> ResNet:
    if cfg.MODEL.SN.LAST_GAMMA:
        zero_init_last_sn(resnet)
    return freeze_sn_stages(resnet, cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ResNet (depth 18/34/50/101/152) with ``MODEL.RESNETS.NORM`` resolved
    through sn_det in the stem, every block and every shortcut."""
    return _finish_resnet(build_resnet_backbone(with_resolved_norms(cfg), input_shape), cfg)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """detectron2's ResNet-FPN with ``MODEL.RESNETS.NORM`` in the ResNet and ``MODEL.FPN.NORM``
    in the FPN lateral and output convs (which then have no bias, as detectron2 does)."""
    fpn = build_resnet_fpn_backbone(with_resolved_norms(cfg), input_shape)
    _finish_resnet(fpn.bottom_up, cfg)
    return fpn


@BACKBONE_REGISTRY.register()
def build_sn_retinanet_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """detectron2's RetinaNet ResNet-FPN (P3-P7: FPN on res3-res5, P6/P7 from P5 by
    ``LastLevelP6P7``) with ``MODEL.RESNETS.NORM`` in the ResNet and ``MODEL.FPN.NORM`` in the
    FPN lateral and output convs."""
    fpn = build_retinanet_resnet_fpn_backbone(with_resolved_norms(cfg), input_shape)
    _finish_resnet(fpn.bottom_up, cfg)
    return fpn
