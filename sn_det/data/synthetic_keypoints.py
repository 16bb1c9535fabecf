"""Keypoints on the embedded synthetic shapes: ``sn_synth_kpt_train`` / ``sn_synth_kpt_val``.

The images and objects of ``sn_synth_{train,val}`` (see :mod:`sn_det.data.synthetic`), each
object annotated with 5 keypoints, all visible, taken from the exact polygon it was drawn
from:

| keypoint | where |
|---|---|
| ``top``, ``right``, ``bottom``, ``left`` | the shape's extreme points (smallest y, largest x, ...) |
| ``centre`` | the centroid of the polygon's vertices |

These are defined for every shape and rotation, and a horizontal flip maps the left extreme
to the right one (``keypoint_flip_map``), as detectron2's augmentation needs. The COCO json
(``keypoints`` and ``num_keypoints`` per annotation, keypoint names and skeleton per
category) is written next to the instance set on first use, in well under a second, and read
by detectron2's ``load_coco_json``; ``COCOEvaluator`` computes keypoint AP from it with
:data:`KEYPOINT_OKS_SIGMAS` (``TEST.KEYPOINT_OKS_SIGMAS`` of the recipes).
"""

import json
import os
from typing import Dict, List

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .synthetic import (
    CATEGORIES,
    SYNTH_SPLITS,
    ensure_synthetic_dataset,
    generate_folder,
    synthetic_root,
)

__all__ = [
    "KEYPOINT_NAMES",
    "KEYPOINT_FLIP_MAP",
    "KEYPOINT_CONNECTION_RULES",
    "KEYPOINT_OKS_SIGMAS",
    "KEYPOINT_SPLITS",
    "keypoint_polygon_points",
    "ensure_keypoint_dataset",
    "register_keypoint_datasets",
]

VERSION = "v1"  # bump when the keypoints change, so stale files are never reused
KEYPOINT_NAMES = ("top", "right", "bottom", "left", "centre")
KEYPOINT_FLIP_MAP = (("left", "right"),)
# Drawn by detectron2's Visualizer: the outline through the extremes, and spokes to the centre.
KEYPOINT_CONNECTION_RULES = [
    ("top", "right", (255, 128, 0)),
    ("right", "bottom", (255, 128, 0)),
    ("bottom", "left", (255, 128, 0)),
    ("left", "top", (255, 128, 0)),
    ("centre", "top", (0, 200, 255)),
    ("centre", "bottom", (0, 200, 255)),
]
# OKS sigma per keypoint (COCO's are 0.025-0.107): with the objects' sqrt(area) ~ 20-45 px,
# an error of ~2-4 px still gives an OKS of 0.6.
KEYPOINT_OKS_SIGMAS = (0.05, 0.05, 0.05, 0.05, 0.05)
# keypoint split -> the instance split whose images and objects it annotates.
KEYPOINT_SPLITS: Dict[str, str] = {
    "sn_synth_kpt_train": "sn_synth_train",
    "sn_synth_kpt_val": "sn_synth_val",
}


def keypoint_polygon_points(polygon: np.ndarray) -> np.ndarray:
    """The 5 keypoints of a shape, in :data:`KEYPOINT_NAMES` order.

    Args:
        polygon: (K, 2) vertices (x, y) of the shape.

    Returns:
        (5, 2) float array of (x, y).
    """
    top = polygon[np.argmin(polygon[:, 1])]
    right = polygon[np.argmax(polygon[:, 0])]
    bottom = polygon[np.argmax(polygon[:, 1])]
    left = polygon[np.argmin(polygon[:, 0])]
    return np.stack([top, right, bottom, left, polygon.mean(0)])


def _root() -> str:
    return os.path.join(os.path.dirname(synthetic_root()), f"sn_synth_kpt_{VERSION}")


def _paths(name: str):
    """(json written here, image folder of the instance split it annotates)."""
    split = name.rsplit("_", 1)[-1]
    inst_root = synthetic_root()
    return (
        os.path.join(_root(), f"person_keypoints_{split}.json"),
        os.path.join(inst_root, split),
    )


def _keypoint_json(instance_json: str) -> dict:
    with open(instance_json) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        polygon = np.asarray(ann["segmentation"][0], dtype=np.float64).reshape(-1, 2)
        points = keypoint_polygon_points(polygon)
        ann["keypoints"] = [round(float(v), 2) for xy in points for v in (*xy, 2)]
        ann["num_keypoints"] = len(KEYPOINT_NAMES)
    skeleton = [
        [KEYPOINT_NAMES.index(a) + 1, KEYPOINT_NAMES.index(b) + 1]
        for a, b, _ in KEYPOINT_CONNECTION_RULES
    ]
    data["categories"] = [
        {**c, "keypoints": list(KEYPOINT_NAMES), "skeleton": skeleton} for c in CATEGORIES
    ]
    return data


def ensure_keypoint_dataset() -> str:
    """Write the keypoint annotations if missing (the instance set first); return their folder.

    Written into a temporary sibling folder and renamed into place, so a reader never sees a
    half-written file and concurrent processes do not interfere.
    """
    root = _root()
    if os.path.isfile(os.path.join(root, "COMPLETE")):
        return root
    inst_root = ensure_synthetic_dataset()

    def write(folder):
        for name, inst_name in KEYPOINT_SPLITS.items():
            split = inst_name.rsplit("_", 1)[-1]
            data = _keypoint_json(os.path.join(inst_root, "annotations", f"instances_{split}.json"))
            with open(os.path.join(folder, os.path.basename(_paths(name)[0])), "w") as f:
                json.dump(data, f)
        open(os.path.join(folder, "COMPLETE"), "w").close()

    generate_folder(
        root,
        write,
        lambda folder: os.path.isfile(os.path.join(folder, "COMPLETE")),
        "the synthetic keypoint annotations",
    )
    return root


def _load(name: str) -> List[dict]:
    ensure_keypoint_dataset()
    json_file, image_root = _paths(name)
    return load_coco_json(json_file, image_root, name)


def register_keypoint_datasets() -> None:
    """Register ``sn_synth_kpt_train``/``sn_synth_kpt_val`` as ``register_coco_instances``
    would, with the keypoint metadata, generated on first load."""
    assert set(KEYPOINT_SPLITS.values()) <= set(SYNTH_SPLITS)
    for name in KEYPOINT_SPLITS:
        if name in DatasetCatalog.list():
            continue
        json_file, image_root = _paths(name)
        DatasetCatalog.register(name, lambda name=name: _load(name))
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="coco",
            thing_classes=[c["name"] for c in CATEGORIES],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(CATEGORIES)},
            keypoint_names=list(KEYPOINT_NAMES),
            keypoint_flip_map=list(KEYPOINT_FLIP_MAP),
            keypoint_connection_rules=KEYPOINT_CONNECTION_RULES,
        )
