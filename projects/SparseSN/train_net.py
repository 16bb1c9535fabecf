#!/usr/bin/env python
"""Train or evaluate detectron2 models with Sparse Switchable Normalization.

sn_det's train_net (same flags, checkpoints, evaluation) with MODEL.SSN.* and the hook that
grows the sparsestmax radius with the iteration and fixes one-hot choices.

Examples:
  projects/SparseSN/train_net.py --config-file projects/SparseSN/configs/quick_schedules/mask_rcnn_ssn_instant_test.yaml
  projects/SparseSN/train_net.py --num-gpus 8 --config-file projects/SparseSN/configs/mask_rcnn_R_50_FPN_2x_ssn.yaml
"""

from sn_det.engine import Trainer
from sn_det.projects.sparse_sn import SparsestMaxRadius, add_sparse_sn_config
from sn_det.tools.train_net import invoke_main


class SSNTrainer(Trainer):
    """sn_det's Trainer plus the radius schedule (first, so the radius is set before the
    step's forward)."""

    def build_hooks(self):
        return [SparsestMaxRadius(self.cfg)] + super().build_hooks()


if __name__ == "__main__":
    invoke_main(SSNTrainer, config_adders=(add_sparse_sn_config,), epilog=__doc__)
