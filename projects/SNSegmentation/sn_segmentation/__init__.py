"""DeepLabV3/V3+ with Switchable Normalization for semantic segmentation.

detectron2's DeepLab project supplies the heads, the DeepLab ResNet and the poly schedule;
sn_det supplies the SN backbone builder (``build_sn_resnet_deeplab_backbone``) and the
embedded ``sn_synth_sem_seg_*`` data. This package adds the trainer and multi-scale + flip
inference."""

from detectron2.projects.deeplab import add_deeplab_config

from .trainer import SNSegTrainer, build_sem_seg_train_aug
from .tta import SemanticSegmentorWithTTA

__all__ = [
    "add_deeplab_config",
    "SNSegTrainer",
    "SemanticSegmentorWithTTA",
    "build_sem_seg_train_aug",
]
