"""Builders registered in detectron2's registries (importing this module registers them)."""

from .backbone import (
    build_sn_resnet_backbone,
    build_sn_resnet_fpn_backbone,
    freeze_sn_stages,
    zero_init_last_sn,
)
from .importance import GROUPS, TERMS, LayerImportance, importance_ratios, layer_group
from .norm_config import NORM_KEYS, check_norm_config, with_resolved_norms
from .roi_heads import SNFastRCNNConvFCHead, SNMaskRCNNConvUpsampleHead, SNRes5ROIHeads

try:  # the DeepLab ResNet needs detectron2's DeepLab project (in the detectron2 wheel)
    import detectron2.projects.deeplab  # noqa: F401
except ImportError:
    pass
else:
    from .deeplab import DeepLabResNet, build_sn_resnet_deeplab_backbone

__all__ = [k for k in globals().keys() if not k.startswith("_")]
