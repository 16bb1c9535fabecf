"""LazyConfig: the R-50-FPN SN Mask R-CNN recipe (SN in backbone, FPN, a 4conv1fc box head and
the 4-conv mask head), fine-tuned 2x from the (8,32) ImageNet SN model: the LazyConfig form
of configs/sn_baselines' yacs recipes. Train with tools/lazyconfig_train_net.py, which turns
the "SN" names below into SN layers (sn_det.lazy.resolve_lazy_norms)."""

from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from sn_det.engine import sn_optimizer_params

_zoo = get_config("common/models/mask_rcnn_fpn.py")
model = _zoo.model
dataloader = get_config("common/data/coco.py").dataloader
train = get_config("common/train.py").train
optimizer = get_config("common/optim.py").SGD

# fmt: off
model.backbone.bottom_up.stem.norm = \
    model.backbone.bottom_up.stages.norm = \
    model.backbone.norm = \
    model.roi_heads.box_head.conv_norm = \
    model.roi_heads.mask_head.conv_norm = "SN"
# fmt: on
model.backbone.bottom_up.stages.stride_in_1x1 = False  # the published ResNet-v1 layout
model.backbone.bottom_up.freeze_at = 2
model.roi_heads.box_head.conv_dims = [256, 256, 256, 256]
model.roi_heads.box_head.fc_dims = [1024]
# The ImageNet SN models' preprocessing: RGB, torchvision's mean/std on a 0-255 scale.
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
model.input_format = "RGB"
dataloader.train.mapper.image_format = "RGB"

# SN's switch logits and affine parameters without weight decay (the authors' setting).
optimizer.params = L(sn_optimizer_params)(weight_decay_norm=0.0, weight_decay_switch=0.0)
optimizer.lr = 0.02

train.init_checkpoint = "pretrained/resnet50_sn_8x32.pth"
train.max_iter = 180000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[120000, 160000], num_updates=180000
    ),
    warmup_length=1000 / 180000,
    warmup_factor=0.001,
)
