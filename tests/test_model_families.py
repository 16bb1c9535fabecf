"""SN in every detectron2 model family, with detectron2's stock builder names.

Each model-zoo config gets "SN" in every norm key found in it, is shrunk to an R-18 with
tiny heads, is built on the CPU by ``sn_det.modeling.build_model``, and trains one step.
"""

import pytest
import torch
from detectron2 import model_zoo
from detectron2.structures import BitMasks, Boxes, Instances, Keypoints
from detectron2.utils.events import EventStorage

from family_testing import assert_sn_where_expected
from sn_det.config import get_sn_cfg
from sn_det.layers import SwitchNorm2d
from sn_det.modeling import CycleSwitchNorm, build_model, check_norm_config, norm_keys

TINY = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.RETINANET.NUM_CONVS", "2",
    "MODEL.RETINANET.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    # One conv in the box head, so that ROI_BOX_HEAD.NORM builds a layer.
    "MODEL.ROI_BOX_HEAD.NUM_CONV", "1", "MODEL.ROI_BOX_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS", "(16, 16)",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "16", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4",
]  # fmt: skip

# model-zoo config -> the parts (module-name prefixes) that must hold SN layers.
FAMILIES = {
    "Base-RetinaNet.yaml": ("backbone.bottom_up.", "backbone.fpn_", "head.cls_subnet."),
    "Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml": (
        "backbone.bottom_up.",
        "backbone.fpn_",
        "roi_heads.box_head.0.",
        "roi_heads.box_head.2.",
        "roi_heads.mask_head.",
    ),
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_1x.yaml": (
        "backbone.bottom_up.",
        "backbone.fpn_",
        "roi_heads.box_head.",
        "roi_heads.mask_head.",
        "sem_seg_head.",
    ),
    "COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml": (
        "backbone.bottom_up.",
        "backbone.fpn_",
        "roi_heads.box_head.",
    ),
}


def zoo_cfg(name, norm="SN", *opts):
    cfg = get_sn_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(name))
    for key in norm_keys(cfg):
        cfg.merge_from_list([key, norm])
    cfg.merge_from_list(TINY + list(opts))
    return cfg


def batch(num_keypoints=17, size=128):
    """Two images with two objects each, every kind of annotation a family may need."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        inst = Instances((size, size))
        boxes = torch.tensor([[10.0, 12.0, 60.0, 70.0], [64.0, 40.0, 120.0, 110.0]])
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 2])
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_masks = BitMasks(masks)
        xy = boxes[:, None, :2] + torch.rand(2, num_keypoints, 2, generator=g) * 40
        inst.gt_keypoints = Keypoints(torch.cat([xy, torch.full((2, num_keypoints, 1), 2.0)], 2))
        sem_seg = torch.zeros(size, size, dtype=torch.long)
        sem_seg[size // 2 :] = 3
        image = torch.rand(3, size, size, generator=g) * 255
        out.append({"image": image, "instances": inst, "sem_seg": sem_seg})
    return out


def train_step(model):
    model.train()
    with EventStorage(0):
        losses = model(batch())
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    model.eval()
    with torch.no_grad():
        model([{"image": b["image"]} for b in batch()])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_zoo_config_with_sn_in_every_norm_key(name):
    cfg = zoo_cfg(name)
    assert cfg.MODEL.BACKBONE.NAME.startswith("build_")  # the stock name, untouched
    assert not cfg.MODEL.BACKBONE.NAME.startswith("build_sn_")
    check_norm_config(cfg)
    torch.manual_seed(0)
    model = build_model(cfg)
    assert_sn_where_expected(model, FAMILIES[name])
    train_step(model)
    grads = [m.mean_weight.grad for m in model.modules() if isinstance(m, SwitchNorm2d)]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_pointrend_with_sn():
    from detectron2.projects.point_rend import add_pointrend_config

    cfg = get_sn_cfg([add_pointrend_config])
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    for key in norm_keys(cfg):
        cfg.merge_from_list([key, "SN"])
    # PointRend's instance-segmentation head (its Base-PointRend-RCNN-FPN.yaml, which the
    # installed detectron2 does not ship).
    cfg.merge_from_list(
        TINY
        + ["MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.NAME", "PointRendMaskHead"]
        + ["MODEL.ROI_MASK_HEAD.POOLER_TYPE", ""]
        + ["MODEL.ROI_MASK_HEAD.IN_FEATURES", "('p2',)", "MODEL.ROI_MASK_HEAD.FC_DIM", "32"]
        + ["MODEL.ROI_MASK_HEAD.POINT_HEAD_ON", "True", "MODEL.POINT_HEAD.NUM_CLASSES", "3"]
        + ["MODEL.POINT_HEAD.FC_DIM", "16", "MODEL.POINT_HEAD.IN_FEATURES", "('p2',)"]
        + ["MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES", "True", "INPUT.MASK_FORMAT", "bitmask"]
    )
    model = build_model(cfg)
    assert type(model.roi_heads.mask_head).__name__ == "PointRendMaskHead"
    assert_sn_where_expected(model, ("backbone.bottom_up.", "backbone.fpn_", "roi_heads.box_head."))
    train_step(model)


def test_retinanet_head_keeps_sn_statistics_per_level():
    cfg = zoo_cfg("Base-RetinaNet.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    towers = [model.head.cls_subnet, model.head.bbox_subnet]
    cycles = [m for t in towers for m in t if isinstance(m, CycleSwitchNorm)]
    assert len(cycles) == 4 and all(len(c) == 5 for c in cycles)  # 2 convs x 2 towers, P3-P7
    # One set of learned parameters per tower layer: each level's copy holds the same ones.
    for c in cycles:
        assert all(
            c[k].weight is c[0].weight and c[k].var_weight is c[0].var_weight for k in range(5)
        )
    n_unique = len({id(p) for p in model.parameters()})
    assert n_unique == sum(1 for _ in model.parameters())
    train_step(model)
    # Each level's statistics are that level's: P3 (16x16) and P7 (1x1) differ.
    c = cycles[0]
    assert not torch.allclose(c[0].running_mean, c[4].running_mean)
    assert c._pos == 0  # a whole number of cycles per forward


def test_stock_builders_apply_sn_freeze_and_last_gamma():
    cfg = zoo_cfg(
        "Base-RetinaNet.yaml", "SN", "MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.SN.LAST_GAMMA", "True"
    )
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    assert all(m.frozen for m in bottom_up.res2.modules() if isinstance(m, SwitchNorm2d))
    assert not any(m.frozen for m in bottom_up.res3.modules() if isinstance(m, SwitchNorm2d))
    assert torch.count_nonzero(bottom_up.res4[0].conv2.norm.weight) == 0
    # C4: detectron2's own Res5ROIHeads builds its res5 with SN and gets LAST_GAMMA too.
    cfg = zoo_cfg("Base-RCNN-C4.yaml", "SN", "MODEL.SN.LAST_GAMMA", "True")
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == "Res5ROIHeads"
    assert isinstance(model.roi_heads.res5[0].conv1.norm, SwitchNorm2d)
    assert torch.count_nonzero(model.roi_heads.res5[0].conv3.norm.weight) == 0


def test_sn_retinanet_backbone_builder_is_the_stock_one_with_sn():
    cfg = zoo_cfg("Base-RetinaNet.yaml", "SN", "MODEL.BACKBONE.FREEZE_AT", "2")
    stock = build_model(cfg).backbone
    cfg.MODEL.BACKBONE.NAME = "build_sn_retinanet_resnet_fpn_backbone"
    from detectron2.modeling import build_backbone

    sn = build_backbone(cfg)  # detectron2's own call: the registered builder resolves its keys
    assert list(sn.output_shape()) == ["p3", "p4", "p5", "p6", "p7"]
    assert {k: v.shape for k, v in sn.state_dict().items()} == {
        k: v.shape for k, v in stock.state_dict().items()
    }
    assert all(m.frozen for m in sn.bottom_up.stem.modules() if isinstance(m, SwitchNorm2d))
    assert isinstance(sn.fpn_lateral3.norm, SwitchNorm2d)


@pytest.mark.parametrize(
    "key", ["MODEL.RETINANET.NORM", "MODEL.SEM_SEG_HEAD.NORM", "MODEL.RESNETS.NORM"]
)
def test_unknown_norm_name_is_one_sentence_naming_the_key(key):
    cfg = zoo_cfg("Base-RetinaNet.yaml", "SN", key, "SNN")
    for call in (check_norm_config, build_model):
        with pytest.raises(ValueError, match=rf"^{key} = 'SNN' is not a known norm type; known: "):
            call(cfg)


def test_norm_keys_are_found_in_the_config():
    from detectron2.projects.deeplab import add_deeplab_config

    cfg = get_sn_cfg([add_deeplab_config])
    keys = norm_keys(cfg)
    for key in (
        "MODEL.RESNETS.NORM",
        "MODEL.FPN.NORM",
        "MODEL.RETINANET.NORM",
        "MODEL.SEM_SEG_HEAD.NORM",
        "MODEL.ROI_BOX_HEAD.NORM",
        "MODEL.ROI_MASK_HEAD.NORM",
    ):
        assert key in keys
    assert "SOLVER.WEIGHT_DECAY_NORM" not in keys  # a number, not a norm name


def test_lazyconfig_retinanet_with_sn_gets_per_level_statistics():
    from sn_det.lazy import build_lazy_model, resolve_lazy_norms

    cfg = model_zoo.get_config("common/models/retinanet.py")
    cfg.model.head.norm = "SN"
    cfg.model.head.conv_dims = [32]
    cfg.model.backbone.out_channels = 32
    cfg.model.backbone.bottom_up.stem.norm = "SN"
    cfg.model.backbone.bottom_up.stages.norm = "SN"
    resolve_lazy_norms(cfg)
    model = build_lazy_model(cfg.model)
    assert isinstance(model.head.cls_subnet[1], CycleSwitchNorm)
    assert isinstance(model.backbone.bottom_up.stem.conv1.norm, SwitchNorm2d)
