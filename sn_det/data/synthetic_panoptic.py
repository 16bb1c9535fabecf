"""The embedded panoptic data: the synthetic shapes as things, their background as stuff.

Every image of the embedded instance set (:mod:`sn_det.data.synthetic`) is labelled in COCO's
panoptic format. The things are the instance set's shapes (circle, square, triangle; the
same polygons as its instance annotations). The stuff is the background, split by how bright
it is:

| stuff category | id | where |
|---|---|---|
| ``light`` | 4 | background whose noise-free gradient has luma (0.299 R + 0.587 G + 0.114 B) >= 128 |
| ``dark`` | 5 | the rest of the background |

(A category that would cover fewer than 256 pixels of an image, a sliver at its edge, is
given to the other: see :func:`stuff_map`.)

The background of each image is a linear gradient between two random colours plus pixel
noise, so the light/dark border is a straight line across the image where the gradient
crosses mid-grey (or absent, when both ends are on one side); the model has to tell the two
apart from the local colour through the noise. The noise-free gradient is not stored in the
image files: it is regenerated from the instance set's seeds
(:func:`sn_det.data.synthetic.replay_split`), and each regenerated image is checked against
the stored file, so stuff and images cannot disagree.

Files, generated on first use (a few seconds) into ``sn_synth_panoptic_<version>/`` beside
the instance set, laid out like COCO's panoptic release:

- ``annotations/panoptic_{train,val}.json``: images, categories (``isthing``, ``color``) and
  one annotation per image (``file_name`` of its PNG, ``segments_info`` with id,
  category_id, area, bbox, iscrowd). A thing's segment id is its instance annotation's id;
  a stuff segment's is ``STUFF_SEGMENT_ID_BASE + category id``.
- ``panoptic_{train,val}/<image>.png``: segment ids as RGB (id = R + 256 G + 256^2 B).
- ``panoptic_stuff_{train,val}/<image>.png``: the "separated" semantic labels detectron2's
  Panoptic FPN trains on: 0 for every thing pixel, then 1 ``light``, 2 ``dark``.

Registered names, as detectron2 registers ``coco_2017_*_panoptic_separated``:
``sn_synth_panoptic_train`` (400 images) and ``sn_synth_panoptic_val`` (60), with
``evaluator_type = "coco_panoptic_seg"``; their records are the instance annotations merged
with ``sem_seg_file_name``, so the trainer evaluates them with SemSegEvaluator, COCOEvaluator
and COCOPanopticEvaluator (PQ, which needs the ``panopticapi`` module).
"""

import json
import os
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, load_sem_seg
from detectron2.data.datasets.coco_panoptic import merge_to_panoptic

from .synthetic import (  # _paths: the instance set's layout, shared rather than repeated
    CATEGORIES,
    SYNTH_SPLITS,
    _paths,
    ensure_synthetic_dataset,
    generate_folder,
    paint_segmentation,
    replay_split,
    synthetic_root,
)

__all__ = [
    "PANOPTIC_SPLITS",
    "STUFF_CATEGORIES",
    "STUFF_SEGMENT_ID_BASE",
    "panoptic_root",
    "stuff_map",
    "ensure_synthetic_panoptic_dataset",
    "register_panoptic_separated",
    "register_synthetic_panoptic_datasets",
]


VERSION = "v1"  # bump when the labels change, so stale caches are never reused
THING_COLORS = [[220, 20, 60], [0, 0, 142], [119, 11, 32]]
STUFF_CATEGORIES = [
    {"id": 4, "name": "light", "isthing": 0, "color": [230, 220, 170]},
    {"id": 5, "name": "dark", "isthing": 0, "color": [70, 70, 70]},
]
PANOPTIC_CATEGORIES = [
    {**c, "isthing": 1, "color": color} for c, color in zip(CATEGORIES, THING_COLORS)
] + STUFF_CATEGORIES
# Segment ids of stuff: above every instance annotation id of the instance set (< 2000).
STUFF_SEGMENT_ID_BASE = 1 << 20
LUMA = np.array([0.299, 0.587, 0.114])
# Fewest background pixels a stuff category may cover in an image (1/64 of it; the quick
# schedule's MODEL.PANOPTIC_FPN.COMBINE.STUFF_AREA_LIMIT).
MIN_STUFF_AREA = 256
# panoptic name -> the instance split whose images and things it labels
PANOPTIC_SPLITS: Dict[str, str] = {
    "sn_synth_panoptic_train": "sn_synth_train",
    "sn_synth_panoptic_val": "sn_synth_val",
}


def panoptic_root() -> str:
    """Folder holding the panoptic labels (created on first use), beside the instance set."""
    return os.path.join(os.path.dirname(synthetic_root()), f"sn_synth_panoptic_{VERSION}")


def _files(root: str, name: str) -> Tuple[str, str, str]:
    """(panoptic json, panoptic PNG folder, separated semantic PNG folder) of ``name``."""
    split = name.rsplit("_", 1)[-1]
    return (
        os.path.join(root, "annotations", f"panoptic_{split}.json"),
        os.path.join(root, f"panoptic_{split}"),
        os.path.join(root, f"panoptic_stuff_{split}"),
    )


def stuff_map(clean_background: np.ndarray) -> np.ndarray:
    """Stuff category id per pixel of a noise-free background.

    Args:
        clean_background: (H, W, 3) float RGB.

    Returns:
        (H, W) int64: 4 (``light``) where the luma is >= 128, else 5 (``dark``); when one
        of the two covers fewer than :data:`MIN_STUFF_AREA` pixels (a sliver at the image
        edge, invisible under the noise), the whole background is the other.
    """
    light, dark = (c["id"] for c in STUFF_CATEGORIES)
    is_light = clean_background @ LUMA >= 128
    if is_light.sum() < MIN_STUFF_AREA:
        is_light[:] = False
    elif (~is_light).sum() < MIN_STUFF_AREA:
        is_light[:] = True
    return np.where(is_light, light, dark)


def _segment_ids(image_annotations: List[dict], stuff: np.ndarray):
    """(H, W) int64 segment ids and their segments_info for one image: stuff everywhere,
    then each thing's polygon (rasterised as the instance generator painted it) on top."""
    ids = STUFF_SEGMENT_ID_BASE + stuff
    category = {}
    for ann in image_annotations:
        mask = paint_segmentation(np.zeros(stuff.shape, np.uint8), ann["segmentation"], 1)
        ids[mask.astype(bool)] = ann["id"]
        category[ann["id"]] = ann["category_id"]
    for c in STUFF_CATEGORIES:
        category[STUFF_SEGMENT_ID_BASE + c["id"]] = c["id"]
    segments = []
    for segment_id in np.unique(ids):
        ys, xs = np.nonzero(ids == segment_id)
        x0, y0 = int(xs.min()), int(ys.min())
        segments.append(
            {
                "id": int(segment_id),
                "category_id": category[int(segment_id)],
                "area": int(len(xs)),
                "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                "iscrowd": 0,
            }
        )
    return ids, segments


def _id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 RGB, COCO panoptic's encoding."""
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


def _write_split(tmp: str, name: str, instance_root: str) -> None:
    instance_split = PANOPTIC_SPLITS[name]
    json_file, image_dir = _paths(instance_root, instance_split)
    with open(json_file) as f:
        coco = json.load(f)
    per_image = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]].append(ann)
    panoptic_json, panoptic_dir, stuff_dir = _files(tmp, name)
    for folder in (os.path.dirname(panoptic_json), panoptic_dir, stuff_dir):
        os.makedirs(folder, exist_ok=True)
    # stuff category id (0 for things) -> separated semantic label, as a lookup table
    separated = np.zeros(max(c["id"] for c in STUFF_CATEGORIES) + 1, np.uint8)
    for i, c in enumerate(STUFF_CATEGORIES):
        separated[c["id"]] = i + 1
    annotations = []
    for image, (pixels, _, clean) in zip(coco["images"], replay_split(instance_split)):
        stored = cv2.imread(os.path.join(image_dir, image["file_name"]))[:, :, ::-1]
        if not np.array_equal(stored, pixels):
            raise RuntimeError(
                f"{image['file_name']} of {instance_split} differs from what its seed "
                "regenerates, so its stuff labels cannot be made; delete the dataset cache "
                f"{instance_root} so it is regenerated"
            )
        ids, segments = _segment_ids(per_image[image["id"]], stuff_map(clean))
        png = os.path.splitext(image["file_name"])[0] + ".png"
        cv2.imwrite(os.path.join(panoptic_dir, png), _id_to_rgb(ids)[:, :, ::-1])
        semantic = np.where(ids >= STUFF_SEGMENT_ID_BASE, ids - STUFF_SEGMENT_ID_BASE, 0)
        cv2.imwrite(os.path.join(stuff_dir, png), separated[semantic])
        annotations.append({"image_id": image["id"], "file_name": png, "segments_info": segments})
    with open(panoptic_json, "w") as f:
        json.dump(
            {
                "images": coco["images"],
                "annotations": annotations,
                "categories": PANOPTIC_CATEGORIES,
            },
            f,
        )


def _is_complete(root: str) -> bool:
    if not os.path.isfile(os.path.join(root, "COMPLETE")):
        return False
    for name, instance_split in PANOPTIC_SPLITS.items():
        panoptic_json, panoptic_dir, stuff_dir = _files(root, name)
        if not os.path.isfile(panoptic_json):
            return False
        for folder in (panoptic_dir, stuff_dir):
            count = len(os.listdir(folder)) if os.path.isdir(folder) else -1
            if count != SYNTH_SPLITS[instance_split][0]:
                return False
    return True


def ensure_synthetic_panoptic_dataset() -> str:
    """Generate the instance set and the panoptic labels if missing or incomplete; return
    the panoptic root.

    Written into a temporary sibling folder that is renamed into place, so readers never see
    a half-written set and concurrent processes do not interfere (the first rename wins).
    """
    instance_root = ensure_synthetic_dataset()
    root = panoptic_root()
    if _is_complete(root):
        return root

    def write(folder):
        for name in PANOPTIC_SPLITS:
            _write_split(folder, name, instance_root)
        open(os.path.join(folder, "COMPLETE"), "w").close()

    generate_folder(root, write, _is_complete, "the synthetic panoptic labels")
    return root


def panoptic_metadata() -> dict:
    """Category metadata of the "separated" form, as detectron2's
    ``_get_coco_panoptic_separated_meta``: contiguous stuff id 0 stands for every thing."""
    stuff_ids = {c["id"]: i + 1 for i, c in enumerate(STUFF_CATEGORIES)}
    return {
        "thing_classes": [c["name"] for c in CATEGORIES],
        "thing_colors": THING_COLORS,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(CATEGORIES)},
        "stuff_classes": ["things"] + [c["name"] for c in STUFF_CATEGORIES],
        "stuff_colors": [[82, 18, 128]] + [c["color"] for c in STUFF_CATEGORIES],
        "stuff_dataset_id_to_contiguous_id": {0: 0, **stuff_ids},
    }


def register_panoptic_separated(
    name: str,
    image_root: str,
    instances_json: str,
    panoptic_json: str,
    panoptic_dir: str,
    stuff_dir: str,
    prepare=lambda: None,
) -> None:
    """Register ``name`` as detectron2's ``register_coco_panoptic_separated`` does (but under
    ``name`` itself), calling ``prepare()`` before the files are first read.

    Records: the instance annotations of ``instances_json`` (with their ids), each with the
    ``sem_seg_file_name`` of its image in ``stuff_dir``.
    """

    def load():
        prepare()
        return merge_to_panoptic(
            load_coco_json(instances_json, image_root, name, extra_annotation_keys=["id"]),
            load_sem_seg(stuff_dir, image_root, gt_ext="png", image_ext="png"),
        )

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        image_root=image_root,
        json_file=instances_json,
        panoptic_json=panoptic_json,
        panoptic_root=panoptic_dir,
        sem_seg_root=stuff_dir,
        evaluator_type="coco_panoptic_seg",
        ignore_label=255,
        **panoptic_metadata(),
    )


def register_synthetic_panoptic_datasets() -> None:
    """Register ``sn_synth_panoptic_train``/``_val`` (generated lazily, on first load)."""
    root = panoptic_root()
    for name, instance_split in PANOPTIC_SPLITS.items():
        if name in DatasetCatalog.list():
            continue
        instances_json, image_root = _paths(synthetic_root(), instance_split)
        register_panoptic_separated(
            name,
            image_root,
            instances_json,
            *_files(root, name),
            prepare=ensure_synthetic_panoptic_dataset,
        )
