"""Builders registered in detectron2's registries (importing this module registers them)."""

from .backbone import (
    build_sn_resnet_backbone,
    build_sn_resnet_fpn_backbone,
    build_sn_retinanet_resnet_fpn_backbone,
    freeze_sn_stages,
    zero_init_last_sn,
)
from .build import build_model, finish_sn_model
from .importance import GROUPS, TERMS, LayerImportance, importance_ratios, layer_group
from .norm_config import check_norm_config, norm_keys, with_resolved_norms
from .retinanet import CycleSwitchNorm, cycle_retinanet_switch_norms, cycle_switch_norms
from .roi_heads import SNFastRCNNConvFCHead, SNMaskRCNNConvUpsampleHead, SNRes5ROIHeads

try:  # the DeepLab ResNet needs detectron2's DeepLab project (in the detectron2 wheel)
    import detectron2.projects.deeplab  # noqa: F401
except ImportError:
    pass
else:
    from .deeplab import DeepLabResNet, build_sn_resnet_deeplab_backbone

__all__ = [k for k in globals().keys() if not k.startswith("_")]
