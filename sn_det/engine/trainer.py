"""The training loop: detectron2's DefaultTrainer with SN-aware optimizer and COCO evaluation."""

import os
import weakref

from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from ..checkpoint import SNDetectionCheckpointer
from .optimizer import build_sn_optimizer

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with SN parameters grouped like norms in the optimizer, every test
    set evaluated by ``COCOEvaluator`` (box AP, and mask AP when masks are predicted), and
    ``MODEL.WEIGHTS``/``--resume`` loaded by :class:`SNDetectionCheckpointer` (published
    ImageNet SN models load directly and completely)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        # DefaultTrainer builds a plain DetectionCheckpointer; loading goes through ours.
        # (The periodic-checkpoint hook keeps the plain one: saving is identical.)
        self.checkpointer = SNDetectionCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_sn_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)
