"""The embedded semantic-segmentation data: the synthetic shapes of ``sn_synth`` as label maps.

Each image of the embedded instance set (:mod:`sn_det.data.synthetic`) gets a label PNG in
which every pixel holds its class: 0 background, 1 circle, 2 square, 3 triangle. The label
maps are rasterised from the instance annotations' polygons (the shapes' outlines, stored
to 0.01 px, so a few border pixels per shape may differ from the painted ones, as in the
instance masks themselves), once, on first use (under a second) and cached next to the instance set; the images
are the instance set's own files.

Registered names: ``sn_synth_sem_seg_train`` (400 images) and ``sn_synth_sem_seg_val``
(60 images), 128x128, as standard detectron2 sem_seg datasets (``file_name`` and
``sem_seg_file_name`` per record; metadata ``stuff_classes``, ``ignore_label`` and
``evaluator_type = "sem_seg"``), so ``SemSegEvaluator`` reads them like any other.
"""

import json
import os
from typing import Dict, List

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .synthetic import (  # _paths: the instance set's layout, shared rather than repeated
    CATEGORIES,
    IMAGE_SIZE,
    SYNTH_SPLITS,
    _paths,
    ensure_synthetic_dataset,
    generate_folder,
    paint_segmentation,
    synthetic_root,
)

__all__ = [
    "SEMSEG_SPLITS",
    "STUFF_CLASSES",
    "IGNORE_LABEL",
    "semseg_root",
    "ensure_synthetic_semseg_dataset",
    "register_synthetic_semseg_datasets",
]


VERSION = "v1"  # bump when the rendering changes, so stale caches are never reused
# Class 0 is the background; the shapes keep the order of the instance set's categories.
STUFF_CLASSES = ["background"] + [c["name"] for c in CATEGORIES]
# Written nowhere (every pixel is a class), but the evaluator and loss need the convention.
IGNORE_LABEL = 255
# sem_seg name -> the instance split it is rendered from
SEMSEG_SPLITS: Dict[str, str] = {
    "sn_synth_sem_seg_train": "sn_synth_train",
    "sn_synth_sem_seg_val": "sn_synth_val",
}


def semseg_root() -> str:
    """Folder holding the label maps (created on first use), beside the instance set."""
    return os.path.join(os.path.dirname(synthetic_root()), f"sn_synth_sem_seg_{VERSION}")


def _label_dir(root: str, name: str) -> str:
    return os.path.join(root, name.rsplit("_", 1)[-1])


def _render_labels(coco: dict) -> Dict[str, np.ndarray]:
    """file_name -> (IMAGE_SIZE, IMAGE_SIZE) uint8 label map from one COCO instance json."""
    contiguous = {c["id"]: i + 1 for i, c in enumerate(CATEGORIES)}
    labels = {
        im["file_name"]: np.zeros((im["height"], im["width"]), np.uint8) for im in coco["images"]
    }
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    for ann in coco["annotations"]:
        label = labels[files[ann["image_id"]]]
        paint_segmentation(label, ann["segmentation"], contiguous[ann["category_id"]])
    return labels


def _is_complete(root: str) -> bool:
    if not os.path.isfile(os.path.join(root, "COMPLETE")):
        return False
    for name, instance_split in SEMSEG_SPLITS.items():
        folder = _label_dir(root, name)
        count = len(os.listdir(folder)) if os.path.isdir(folder) else -1
        if count != SYNTH_SPLITS[instance_split][0]:
            return False
    return True


def ensure_synthetic_semseg_dataset() -> str:
    """Generate the instance set and the label maps if missing or incomplete; return the
    label maps' root.

    As for the instance set, the labels are written into a temporary sibling folder that is
    renamed into place, so readers never see a half-written set and concurrent processes do
    not interfere (the first rename wins).
    """
    instance_root = ensure_synthetic_dataset()
    root = semseg_root()
    if _is_complete(root):
        return root

    def write(folder):
        for name, instance_split in SEMSEG_SPLITS.items():
            json_file, _ = _paths(instance_root, instance_split)
            with open(json_file) as f:
                labels = _render_labels(json.load(f))
            out = _label_dir(folder, name)
            os.makedirs(out)
            for file_name, label in labels.items():
                cv2.imwrite(os.path.join(out, file_name), label)  # png: lossless
        open(os.path.join(folder, "COMPLETE"), "w").close()

    generate_folder(root, write, _is_complete, "the synthetic sem_seg labels")
    return root


def _load(name: str) -> List[dict]:
    root = ensure_synthetic_semseg_dataset()
    _, image_dir = _paths(synthetic_root(), SEMSEG_SPLITS[name])  # made by the line above
    label_dir = _label_dir(root, name)
    return [
        {
            "file_name": os.path.join(image_dir, f),
            "sem_seg_file_name": os.path.join(label_dir, f),
            "height": IMAGE_SIZE,
            "width": IMAGE_SIZE,
        }
        for f in sorted(os.listdir(label_dir))
    ]


def register_synthetic_semseg_datasets() -> None:
    """Register ``sn_synth_sem_seg_train``/``_val`` (generated lazily, on first load)."""
    for name in SEMSEG_SPLITS:
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: _load(name))
        MetadataCatalog.get(name).set(
            stuff_classes=list(STUFF_CLASSES),
            ignore_label=IGNORE_LABEL,
            evaluator_type="sem_seg",
        )
