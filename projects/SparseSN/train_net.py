#!/usr/bin/env python
"""Train or evaluate detectron2 models with Sparse Switchable Normalization.

sn_det's train_net (same flags, checkpoints, evaluation) with MODEL.SSN.* and the hook that
grows the sparsestmax radius with the iteration and fixes one-hot choices.

Examples:
  projects/SparseSN/train_net.py --config-file projects/SparseSN/configs/quick_schedules/mask_rcnn_ssn_instant_test.yaml
  projects/SparseSN/train_net.py --num-gpus 8 --config-file projects/SparseSN/configs/mask_rcnn_R_50_FPN_2x_ssn.yaml
"""

from sn_det.tools.train_net import invoke_main

if __name__ == "__main__":
    # The same as `python -m sn_det.tools.train_net --project SparseSN` (also installed).
    invoke_main(project="SparseSN", epilog=__doc__)
