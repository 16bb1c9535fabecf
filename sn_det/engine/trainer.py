"""The training loop: detectron2's DefaultTrainer with SN-aware optimizer and COCO evaluation."""

import os

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from .optimizer import build_sn_optimizer

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with SN parameters grouped like norms in the optimizer and every
    test set evaluated by ``COCOEvaluator`` (box AP, and mask AP when masks are predicted)."""

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_sn_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)
