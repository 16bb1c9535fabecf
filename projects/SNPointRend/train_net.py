#!/usr/bin/env python
"""Train or evaluate PointRend with Switchable Normalization.

sn_det's train_net (same flags, checkpoints, evaluation) with PointRend's config keys
(``detectron2.projects.point_rend.add_pointrend_config``, whose import also registers
PointRend's heads). Nothing else is needed: sn_det builds detectron2's PointRend heads and
backbone with "SN" in any norm key.

Examples:
  projects/SNPointRend/train_net.py --config-file projects/SNPointRend/configs/quick_schedules/pointrend_rcnn_sn_instant_test.yaml
  projects/SNPointRend/train_net.py --num-gpus 8 --config-file projects/SNPointRend/configs/pointrend_rcnn_R_50_FPN_1x_sn.yaml
"""

from sn_det.tools.train_net import invoke_main

if __name__ == "__main__":
    # The same as `python -m sn_det.tools.train_net --project SNPointRend` (also installed).
    invoke_main(project="SNPointRend", epilog=__doc__)
