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

from sn_det.tools.train_net import invoke_main

if __name__ == "__main__":
    # The same as `python -m sn_det.tools.train_net --project SNSegmentation` (also installed).
    invoke_main(project="SNSegmentation", epilog=__doc__)
