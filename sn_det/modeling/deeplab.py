"""The DeepLab ResNet (``detectron2.projects.deeplab``) with sn_det norms ("SN", ...).

detectron2's ``build_resnet_deeplab_backbone`` (DeepLab or basic stem, dilated res4/res5,
multi-grid res5), built from a config view with ``MODEL.RESNETS.NORM`` resolved, plus what
sn_det adds to every ResNet (frozen SN stages, ``MODEL.SN.LAST_GAMMA``) and padding of the
input to the backbone's output stride.

Imported by ``sn_det.modeling`` only when ``detectron2.projects.deeplab`` is importable.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import ResNet
from detectron2.projects.deeplab import build_resnet_deeplab_backbone

from .backbone import freeze_sn_stages, zero_init_last_sn
from .norm_config import with_resolved_norms

__all__ = ["build_sn_resnet_deeplab_backbone", "DeepLabResNet"]


class DeepLabResNet(ResNet):
    """detectron2's ResNet whose inputs are padded to a multiple of its output stride.

    The DeepLab heads upsample their logits by a fixed factor (``COMMON_STRIDE``) and compare
    them with the padded targets; an input size that is not a multiple of the output stride
    (any ADE20K image) would give logits of another size than the targets. detectron2's
    ResNet asks for no padding (``size_divisibility`` 0); this one asks for the stride.
    """

    @property
    def size_divisibility(self) -> int:
        return max(self._out_feature_strides[f] for f in self._out_features)


@BACKBONE_REGISTRY.register()
def build_sn_resnet_deeplab_backbone(cfg, input_shape: ShapeSpec) -> DeepLabResNet:
    """detectron2's DeepLab ResNet (depth 50/101/152, ``MODEL.RESNETS.STEM_TYPE`` "deeplab"
    or "basic", ``RES4_DILATION``, ``RES5_DILATION``, ``RES5_MULTI_GRID``) with
    ``MODEL.RESNETS.NORM`` resolved through sn_det in the stem, every block and every
    shortcut. The "basic" stem (one 7x7 conv) is the one the published ImageNet SN models
    have, so only it loads them completely."""
    resnet = build_resnet_deeplab_backbone(
        with_resolved_norms(cfg, keys=("MODEL.RESNETS.NORM",)), input_shape
    )
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    # The same modules (already frozen up to FREEZE_AT) in the padding subclass.
    resnet = DeepLabResNet(
        resnet.stem,
        [list(stage.children()) for stage in resnet.stages],
        out_features=resnet._out_features,
        freeze_at=freeze_at,
    )
    if cfg.MODEL.SN.LAST_GAMMA:
        zero_init_last_sn(resnet)
    return freeze_sn_stages(resnet, freeze_at)
