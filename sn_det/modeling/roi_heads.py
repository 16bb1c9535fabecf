"""detectron2 ROI heads whose norms may be sn_det norms. Each one is detectron2's head with
its norm key resolved in ``from_config``; nothing else changes. :func:`sn_det.modeling.build_model`
gives detectron2's own heads SN as well; these names serve configs that name them and models
built by detectron2's ``build_model``."""

from detectron2.modeling.roi_heads import (
    ROI_BOX_HEAD_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
    FastRCNNConvFCHead,
    MaskRCNNConvUpsampleHead,
    Res5ROIHeads,
)

from ..layers import resolve_norm
from .backbone import zero_init_last_sn
from .norm_config import with_resolved_norms

__all__ = ["SNFastRCNNConvFCHead", "SNMaskRCNNConvUpsampleHead", "SNRes5ROIHeads"]


@ROI_BOX_HEAD_REGISTRY.register()
class SNFastRCNNConvFCHead(FastRCNNConvFCHead):
    """Conv+fc box head ("4conv1fc" with NUM_CONV 4, NUM_FC 1) with ``MODEL.ROI_BOX_HEAD.NORM``
    resolved through sn_det. The convs have no bias when a norm follows."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conv_norm"] = resolve_norm(ret["conv_norm"], cfg, key="MODEL.ROI_BOX_HEAD.NORM")
        return ret


@ROI_MASK_HEAD_REGISTRY.register()
class SNMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """The standard mask head (NUM_CONV convs, deconv, predictor) with
    ``MODEL.ROI_MASK_HEAD.NORM`` resolved through sn_det."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["conv_norm"] = resolve_norm(ret["conv_norm"], cfg, key="MODEL.ROI_MASK_HEAD.NORM")
        return ret


@ROI_HEADS_REGISTRY.register()
class SNRes5ROIHeads(Res5ROIHeads):
    """C4 ROI heads whose res5 stage takes ``MODEL.RESNETS.NORM`` (e.g. "SN") like the
    backbone does. res5 is never frozen here, as in detectron2."""

    @classmethod
    def _build_res5_block(cls, cfg):
        res5, out_channels = super()._build_res5_block(
            with_resolved_norms(cfg, ("MODEL.RESNETS.NORM",))
        )
        if cfg.MODEL.SN.LAST_GAMMA:
            zero_init_last_sn(res5)
        return res5, out_channels
