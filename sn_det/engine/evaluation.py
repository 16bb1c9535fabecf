"""Which detectron2 evaluator a test set gets: chosen by its metadata's ``evaluator_type``,
as detectron2's ``tools/train_net.py`` chooses.

| evaluator_type | evaluators |
|---|---|
| ``coco`` | ``COCOEvaluator``: box AP, mask AP and keypoint AP for what the model predicts |
| ``sem_seg`` | ``SemSegEvaluator``: mIoU, fwIoU, mACC, pACC |
| ``coco_panoptic_seg`` | ``SemSegEvaluator`` + ``COCOEvaluator`` + ``COCOPanopticEvaluator`` (PQ) |
| ``cityscapes_instance`` | ``CityscapesInstanceEvaluator`` |
| ``cityscapes_sem_seg`` | ``CityscapesSemSegEvaluator`` |
| ``pascal_voc`` | ``PascalVOCDetectionEvaluator`` |
| ``lvis`` | ``LVISEvaluator`` |
"""

import os

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluator,
    DatasetEvaluators,
    LVISEvaluator,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = [
    "EVALUATOR_TYPES",
    "build_evaluator",
    "check_evaluator_type",
    "sem_seg_evaluator",
    "load_label_image",
]

EVALUATOR_TYPES = (
    "coco",
    "sem_seg",
    "coco_panoptic_seg",
    "cityscapes_instance",
    "cityscapes_sem_seg",
    "pascal_voc",
    "lvis",
)


def load_label_image(filename: str, dtype=None) -> np.ndarray:
    """A label PNG as an (H, W) array: detectron2's default loader for SemSegEvaluator calls
    ``np.array(image, copy=False)``, which numpy >= 2 refuses for PIL images."""
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


def sem_seg_evaluator(dataset_name: str, output_folder: str) -> SemSegEvaluator:
    """detectron2's ``SemSegEvaluator`` (distributed), reading labels with
    :func:`load_label_image` so it works with numpy 1 and 2."""
    return SemSegEvaluator(
        dataset_name,
        distributed=True,
        output_dir=output_folder,
        sem_seg_loading_fn=load_label_image,
    )


def check_evaluator_type(dataset_name: str) -> str:
    """The dataset's ``evaluator_type``, if :func:`build_evaluator` knows it.

    Raises:
        ValueError: the dataset has no ``evaluator_type`` or one not in :data:`EVALUATOR_TYPES`.
    """
    evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
    if evaluator_type not in EVALUATOR_TYPES:
        raise ValueError(
            f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}, for which sn_det "
            f"knows no evaluator; set its metadata's evaluator_type to one of "
            f"{', '.join(EVALUATOR_TYPES)}, or override Trainer.build_evaluator"
        )
    return evaluator_type


def build_evaluator(cfg, dataset_name: str, output_folder=None) -> DatasetEvaluator:
    """The evaluator(s) for ``dataset_name``, by ``MetadataCatalog.get(dataset_name)
    .evaluator_type``.

    Args:
        output_folder: where evaluators write their files; default
            ``OUTPUT_DIR/inference/<dataset_name>``.

    Raises:
        ValueError: the dataset has no ``evaluator_type`` or one not in :data:`EVALUATOR_TYPES`.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    evaluator_type = check_evaluator_type(dataset_name)
    if evaluator_type == "cityscapes_instance":
        return CityscapesInstanceEvaluator(dataset_name)
    if evaluator_type == "cityscapes_sem_seg":
        return CityscapesSemSegEvaluator(dataset_name)
    if evaluator_type == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if evaluator_type == "lvis":
        return LVISEvaluator(dataset_name, output_dir=output_folder)
    evaluators = []
    if evaluator_type in ("sem_seg", "coco_panoptic_seg"):
        evaluators.append(sem_seg_evaluator(dataset_name, output_folder))
    if evaluator_type in ("coco", "coco_panoptic_seg"):
        # Keypoint AP needs one OKS sigma per keypoint unless there are COCO's 17 (whose
        # sigmas pycocotools knows); detectron2 keeps them in TEST.KEYPOINT_OKS_SIGMAS.
        evaluators.append(
            COCOEvaluator(
                dataset_name,
                output_dir=output_folder,
                kpt_oks_sigmas=tuple(cfg.TEST.KEYPOINT_OKS_SIGMAS),
            )
        )
    if evaluator_type == "coco_panoptic_seg":
        evaluators.append(COCOPanopticEvaluator(dataset_name, output_folder))
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)
