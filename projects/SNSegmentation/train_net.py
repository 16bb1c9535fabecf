#!/usr/bin/env python
"""Train or evaluate DeepLabV3/V3+ with Switchable Normalization (semantic segmentation).

sn_det's train_net (same flags, checkpoints, SN-aware optimizer) with detectron2's DeepLab
config keys and the SNSegTrainer: SemSegEvaluator on sem_seg test sets, DeepLab's
augmentation and poly schedule, SN in the heads, and multi-scale + flip inference when
TEST.AUG.ENABLED.

Examples:
  # the demo: a small DeepLabV3+ SN on the embedded data (CPU, under 10 minutes):
  projects/SNSegmentation/train_net.py \\
      --config-file projects/SNSegmentation/configs/quick_schedules/deeplab_v3plus_R_50_sn_synth_demo.yaml
  # ADE20K, the SN authors' setting, 8 GPUs; add TEST.AUG.ENABLED True for multi-scale:
  projects/SNSegmentation/train_net.py --num-gpus 8 \\
      --config-file projects/SNSegmentation/configs/ADE20K/deeplab_v3_R_50_dilated8_sn.yaml
"""

from sn_det.projects.sn_segmentation import SNSegTrainer, add_deeplab_config
from sn_det.tools.train_net import invoke_main

if __name__ == "__main__":
    invoke_main(SNSegTrainer, config_adders=(add_deeplab_config,), epilog=__doc__)
