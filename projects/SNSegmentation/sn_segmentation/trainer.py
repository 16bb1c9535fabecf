"""sn_det's Trainer for semantic segmentation: sem_seg evaluation, DeepLab's augmentation and
poly schedule, SN norms in the DeepLab heads, and the optional multi-scale + flip test."""

import os
from collections import OrderedDict

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler

from sn_det.engine import Trainer
from sn_det.engine.evaluation import check_evaluator_type, sem_seg_evaluator

from .tta import SemanticSegmentorWithTTA

__all__ = ["SNSegTrainer", "build_sem_seg_train_aug"]

# Evaluator types of detectron2's sem_seg datasets that SemSegEvaluator scores. Cityscapes'
# own evaluator needs cityscapesscripts; its mIoU over the 19 train ids is the same number.
SEM_SEG_EVALUATOR_TYPES = ("sem_seg", "cityscapes_sem_seg")


def build_sem_seg_train_aug(cfg):
    """DeepLab's training augmentation: resize the short side (``INPUT.MIN_SIZE_TRAIN``),
    crop (``INPUT.CROP``, retried until no class covers more than
    ``SINGLE_CATEGORY_MAX_AREA``), flip."""
    augs = [
        T.ResizeShortestEdge(
            cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING
        )
    ]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(
            T.RandomCrop_CategoryAreaConstraint(
                cfg.INPUT.CROP.TYPE,
                cfg.INPUT.CROP.SIZE,
                cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
                cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            )
        )
    augs.append(T.RandomFlip())
    return augs


class SNSegTrainer(Trainer):
    """sn_det's Trainer (SN-aware optimizer, checkpointer, batch averaging) with

    - SN in the DeepLab heads (``MODEL.SEM_SEG_HEAD.NORM``, resolved like every norm key by
      :meth:`Trainer.build_model`);
    - ``SemSegEvaluator`` for every sem_seg test set (mIoU, fwIoU, pixel accuracy);
    - DeepLab's augmentation and ``WarmupPolyLR`` (``SOLVER.LR_SCHEDULER_NAME``);
    - with ``TEST.AUG.ENABLED``, every evaluation repeated with multi-scale (+ flip)
      inference, reported under ``<dataset>_TTA`` (``sem_seg_TTA`` with one test set).
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if MetadataCatalog.get(dataset_name).get("evaluator_type") in SEM_SEG_EVALUATOR_TYPES:
            if output_folder is None:
                output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
            return sem_seg_evaluator(dataset_name, output_folder)
        return super().build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def check_evaluators(cls, cfg) -> None:
        """As sn_det's Trainer: the test sets that :meth:`build_evaluator` hands to it (all
        but the semantic-segmentation ones) must have an evaluator it knows."""
        for name in cfg.DATASETS.TEST:
            if MetadataCatalog.get(name).get("evaluator_type") not in SEM_SEG_EVALUATOR_TYPES:
                check_evaluator_type(name)

    @classmethod
    def build_train_loader(cls, cfg):
        mapper = DatasetMapper(cfg, is_train=True, augmentations=build_sem_seg_train_aug(cfg))
        return build_detection_train_loader(cfg, mapper=mapper)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_deeplab_lr_scheduler(cfg, optimizer)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        if not cfg.TEST.AUG.ENABLED:
            return results
        tta_evaluators = [
            cls.build_evaluator(cfg, name, os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
            for name in cfg.DATASETS.TEST
        ]
        tta = super().test(cfg, SemanticSegmentorWithTTA(cfg, model), tta_evaluators)
        if len(cfg.DATASETS.TEST) == 1:  # DefaultTrainer.test unnests a single test set
            results, tta = {cfg.DATASETS.TEST[0]: results}, {cfg.DATASETS.TEST[0]: tta}
        merged = OrderedDict(results)
        merged.update({f"{name}_TTA": res for name, res in tta.items()})
        return merged
