"""LazyConfig: a tiny R-18-FPN SN Mask R-CNN on the embedded synthetic data (CPU), the
LazyConfig counterpart of configs/demo's yacs config, for tests and quick checks."""

from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, get_detection_dataset_dicts
from detectron2.data import transforms as T
from detectron2.modeling.backbone import ResNet
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from sn_det.data import register_synthetic_datasets  # noqa: F401  (sn_synth_* registered)
from sn_det.layers import SNNorm

from .mask_rcnn_R_50_FPN_2x_sn import dataloader, model, optimizer, train

# A factory instead of a name where the momentum differs from the default (short schedule).
sn = L(SNNorm)(name="SN", momentum=0.99)
model.backbone.bottom_up.stem.norm = sn
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(
    depth=18, norm=sn
)
model.backbone.bottom_up.freeze_at = 0
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.post_nms_topk = (128, 50)
model.roi_heads.num_classes = 3
model.roi_heads.batch_size_per_image = 64
model.roi_heads.box_head.input_shape.channels = 64
model.roi_heads.box_head.conv_dims = []
model.roi_heads.box_head.fc_dims = [128]
model.roi_heads.box_predictor.input_shape.channels = 128
model.roi_heads.mask_head.input_shape.channels = 64
model.roi_heads.mask_head.conv_dims = [64, 64]

for split, names in (("train", "sn_synth_train"), ("test", "sn_synth_val")):
    getattr(dataloader, split).dataset = L(get_detection_dataset_dicts)(
        names=names, filter_empty=(split == "train")
    )
dataloader.train.mapper = L(DatasetMapper)(
    is_train=True,
    augmentations=[L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)],
    image_format="RGB",
    use_instance_mask=True,
)
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=128, max_size=128)
]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0

optimizer.lr = 0.005
train.init_checkpoint = ""
train.device = "cpu"
train.max_iter = 4
train.eval_period = 0
train.checkpointer.period = 100000
train.output_dir = "output/lazy_synthetic"
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0], milestones=[], num_updates=4),
    warmup_length=0.0,
    warmup_factor=1.0,
)
