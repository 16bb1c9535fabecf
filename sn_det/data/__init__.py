"""Datasets: the embedded synthetic sets, and an early check that configured data exists."""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .annotation_files import annotation_files_named, check_annotation_files
from .mapper import CheckedMapper, DatasetFileError, check_segmentations
from .synthetic import SYNTH_SPLITS, ensure_synthetic_dataset, register_synthetic_datasets
from .synthetic_keypoints import (
    KEYPOINT_SPLITS,
    ensure_keypoint_dataset,
    register_keypoint_datasets,
)
from .synthetic_panoptic import (
    PANOPTIC_SPLITS,
    ensure_synthetic_panoptic_dataset,
    register_synthetic_panoptic_datasets,
)
from .synthetic_semseg import (
    SEMSEG_SPLITS,
    ensure_synthetic_semseg_dataset,
    register_synthetic_semseg_datasets,
)

__all__ = [
    "annotation_files_named",
    "check_annotation_files",
    "CheckedMapper",
    "DatasetFileError",
    "check_segmentations",
    "prepare_datasets",
    "prepare_dataset_names",
    "ensure_synthetic_dataset",
    "register_synthetic_datasets",
    "SYNTH_SPLITS",
    "ensure_synthetic_semseg_dataset",
    "register_synthetic_semseg_datasets",
    "SEMSEG_SPLITS",
    "KEYPOINT_SPLITS",
    "ensure_keypoint_dataset",
    "register_keypoint_datasets",
    "PANOPTIC_SPLITS",
    "ensure_synthetic_panoptic_dataset",
    "register_synthetic_panoptic_datasets",
    "GENERATED_DATASETS",
]

register_synthetic_datasets()
register_keypoint_datasets()
register_synthetic_semseg_datasets()
register_synthetic_panoptic_datasets()

# The embedded datasets, generated on first use: name -> the function that makes it ready.
GENERATED_DATASETS = {
    **{name: ensure_synthetic_dataset for name in SYNTH_SPLITS},
    **{name: ensure_keypoint_dataset for name in KEYPOINT_SPLITS},
    **{name: ensure_synthetic_semseg_dataset for name in SEMSEG_SPLITS},
    **{name: ensure_synthetic_panoptic_dataset for name in PANOPTIC_SPLITS},
}

# Metadata attributes naming where a registered dataset's files live: COCO-style
# (json_file, image_root), detectron2's sem_seg sets such as ADE20K (sem_seg_root),
# Cityscapes (image_dir, gt_dir) and COCO panoptic (panoptic_json, panoptic_root).
_PATH_ATTRS = (
    "json_file",
    "image_root",
    "sem_seg_root",
    "image_dir",
    "gt_dir",
    "panoptic_json",
    "panoptic_root",
)


def prepare_datasets(cfg, train: bool = True) -> None:
    """Make every dataset in ``DATASETS.TRAIN`` (unless ``train`` is False: evaluation only,
    which reads no training data) and ``DATASETS.TEST`` ready to read.

    Generates the synthetic sets if they are named, and checks that the files of other
    datasets (COCO-style, ADE20K, Cityscapes) exist, so a missing path is one clear error up
    front instead of a traceback from inside a data loader or evaluator.

    Raises:
        FileNotFoundError: names the dataset, the missing path and how to set it.
        KeyError: an unregistered dataset name, listing a few registered ones.
        ModuleNotFoundError: a panoptic test set without the panopticapi module.
        DatasetFileError: a test set's json annotation file that is not valid json.
    """
    if train:
        prepare_dataset_names("DATASETS.TRAIN", cfg.DATASETS.TRAIN, test=False)
    else:  # evaluation reads their metadata (e.g. keypoint flip maps), not their files
        for name in cfg.DATASETS.TRAIN:
            _check_registered("DATASETS.TRAIN", name)
    prepare_dataset_names("DATASETS.TEST", cfg.DATASETS.TEST, test=True)


def prepare_dataset_names(key: str, names, test: bool) -> None:
    """:func:`prepare_datasets` for the dataset ``names`` a config holds under ``key`` (used
    in the messages; a LazyConfig's dataloader keys too); ``test``: evaluated after training,
    so their annotation files and evaluator modules are checked now as well. Raises as
    :func:`prepare_datasets`."""
    for name in names:
        if test and name in DatasetCatalog.list():
            _check_evaluator_dependencies(key, name)
        if name in GENERATED_DATASETS:
            GENERATED_DATASETS[name]()
            continue
        _check_registered(key, name)
        meta = MetadataCatalog.get(name)
        for attr in _PATH_ATTRS:
            path = meta.get(attr, None)
            if path and not os.path.exists(path):
                raise FileNotFoundError(
                    f"{key} names {name!r}, whose {attr} {path} does not exist; put the "
                    f"dataset there, or set DETECTRON2_DATASETS to the folder that holds "
                    f"{_folder_hint(name)}"
                )
        if test:  # read only after training: parse them now
            check_annotation_files([name])


def _check_registered(key: str, name: str) -> None:
    if name not in GENERATED_DATASETS and name not in DatasetCatalog.list():
        raise KeyError(
            f"{key} names {name!r}, which is not a registered dataset; registered are "
            f"e.g. {', '.join(sorted(GENERATED_DATASETS))}, coco_2017_train, coco_2017_val"
        )


def _check_evaluator_dependencies(key: str, name: str) -> None:
    """Refuse before training a test set whose evaluator needs a module that is missing:
    detectron2 imports panopticapi only when PQ is computed, after the whole run."""
    if MetadataCatalog.get(name).get("evaluator_type", None) != "coco_panoptic_seg":
        return
    try:
        import panopticapi.evaluation  # noqa: F401
    except ImportError:
        raise ModuleNotFoundError(
            f"{key} names {name!r}, whose panoptic quality (PQ) is computed by the "
            "panopticapi module, which is not installed; install it with "
            "'pip install --no-deps panopticapi-lite==0.2.0' (it needs only numpy and pillow)"
        ) from None


def _folder_hint(name: str) -> str:
    """The folder under DETECTRON2_DATASETS that detectron2's builtin registration reads."""
    if name.startswith("ade20k"):
        return "ADEChallengeData2016/ (see projects/SNSegmentation/README.md)"
    if name.startswith("cityscapes"):
        return "cityscapes/ (see projects/SNSegmentation/README.md)"
    return "coco/ (see the README, 'Using real COCO')"
