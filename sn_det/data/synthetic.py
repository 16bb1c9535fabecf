"""The embedded default data: a deterministic synthetic COCO-format instance-segmentation set.

Each image holds 1-4 non-overlapping filled shapes (circle, square, triangle) in random
colours and rotations on a noisy gradient background. Masks are the exact polygons the shapes
were drawn from, so annotations are pixel-accurate. Everything is generated from fixed seeds
on first use (about 2 s) into a cache folder, and registered with detectron2 as real COCO
json + images, so ``COCOEvaluator`` and pycocotools read it like any COCO dataset.

Registered names: ``sn_synth_train`` (400 images) and ``sn_synth_val`` (60 images), 128x128.
Cache folder: ``$SN_DET_DATASETS`` or ``~/.cache/sn_det/datasets``. The folder keeps a
manifest of the SHA-256 of every file (``MANIFEST.json``); a cache whose files do not match
it (a truncated annotation file, an overwritten image) is regenerated, with a warning naming
the damaged files, once per process before the data is first read.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Dict, Iterator, List, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "SYNTH_SPLITS",
    "CATEGORIES",
    "synthetic_root",
    "ensure_synthetic_dataset",
    "register_synthetic_datasets",
    "replay_split",
    "generate_folder",
    "publish_folder",
    "paint_segmentation",
]

logger = logging.getLogger(__name__)

# Bump when the generator or the cache layout changes, so that stale caches are never reused
# (v2: the cache carries MANIFEST.json).
VERSION = "v2"
IMAGE_SIZE = 128
CATEGORIES = [
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
]
# name -> (number of images, seed)
SYNTH_SPLITS: Dict[str, Tuple[int, int]] = {"sn_synth_train": (400, 1), "sn_synth_val": (60, 2)}


def synthetic_root() -> str:
    """Folder holding the generated dataset (created on first use)."""
    base = os.environ.get("SN_DET_DATASETS") or os.path.join(
        os.path.expanduser("~"), ".cache", "sn_det", "datasets"
    )
    return os.path.join(base, f"sn_synth_{VERSION}")


def _paths(root: str, name: str) -> Tuple[str, str]:
    split = name.rsplit("_", 1)[-1]
    return os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)


def _shape_polygon(
    rng: np.random.RandomState, kind: str, cx: float, cy: float, r: float
) -> np.ndarray:
    """(K, 2) float polygon of a shape with circumradius r centred at (cx, cy)."""
    if kind == "circle":
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    else:
        k = 4 if kind == "square" else 3
        angles = rng.uniform(0, 2 * np.pi) + np.arange(k) * 2 * np.pi / k
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def paint_segmentation(canvas: np.ndarray, segmentation: List[list], value: int) -> np.ndarray:
    """Fill a COCO polygon segmentation into ``canvas`` (uint8 (H, W)) with ``value``, in
    place, rounding the vertices to integers as the generator rounded them before painting
    the image: so label maps derived from the annotations match the painted shapes."""
    for poly in segmentation:
        pts = np.round(np.asarray(poly).reshape(-1, 2)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], value)
    return canvas


def _background(rng: np.random.RandomState) -> Tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) (S, S, 3) float backgrounds: a linear gradient between two random
    colours, across or down the image, and that gradient plus pixel noise, clipped."""
    s = IMAGE_SIZE
    c0, c1 = rng.uniform(30, 225, size=(2, 3))
    t = np.linspace(0, 1, s)[None, :, None]
    if rng.rand() < 0.5:
        t = t.transpose(1, 0, 2)
    clean = c0 * (1 - t) + c1 * t
    img = clean + rng.normal(0, 8, size=(s, s, 3))
    return np.clip(img, 0, 255), np.broadcast_to(clean, img.shape)  # clean is (1|S, S|1, 3)


def _make_image(rng: np.random.RandomState) -> Tuple[np.ndarray, List[dict], np.ndarray]:
    """One RGB uint8 image, its annotations (category_id, polygon, bbox, area), and its
    noise-free (S, S, 3) float background (the panoptic set's stuff is defined on it)."""
    img, clean = _background(rng)
    anns: List[dict] = []
    boxes: List[Tuple[float, float, float, float]] = []
    for _ in range(rng.randint(1, 5)):
        for _attempt in range(20):  # rejection sampling for non-overlapping placements
            kind_id = rng.randint(len(CATEGORIES))
            r = rng.uniform(10, 26)
            cx, cy = rng.uniform(r + 1, IMAGE_SIZE - r - 1, size=2)
            poly = _shape_polygon(rng, CATEGORIES[kind_id]["name"], cx, cy, r)
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            if all(x1 + 2 < a or b + 2 < x0 or y1 + 2 < c or d + 2 < y0 for a, c, b, d in boxes):
                break
        else:
            continue
        # A colour far from the local background, so every object is visible.
        local = img[int(cy), int(cx)]
        colour = rng.uniform(0, 255, size=3)
        while np.abs(colour - local).sum() < 150:
            colour = rng.uniform(0, 255, size=3)
        mask = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
        img[mask.astype(bool)] = colour + rng.normal(0, 4, size=(int(mask.sum()), 3))
        ys, xs = np.nonzero(mask)
        bx0, by0, bx1, by1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        boxes.append((x0, y0, x1, y1))
        anns.append(
            {
                "category_id": CATEGORIES[kind_id]["id"],
                "segmentation": [np.round(poly, 2).reshape(-1).tolist()],
                "bbox": [float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)],
                "area": float(mask.sum()),
                "iscrowd": 0,
            }
        )
    return np.clip(img, 0, 255).astype(np.uint8), anns, clean


def replay_split(name: str) -> Iterator[Tuple[np.ndarray, List[dict], np.ndarray]]:
    """Regenerate split ``name`` image by image from its seed, exactly as it was written:
    yields (image, annotations, clean background) per image, in file order. Lets derived
    sets (panoptic stuff) use what the files do not store, without a second random stream."""
    num_images, seed = SYNTH_SPLITS[name]
    rng = np.random.RandomState(seed)
    for _ in range(num_images):
        yield _make_image(rng)


def _generate_split(root: str, name: str) -> None:
    json_file, image_dir = _paths(root, name)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    images, annotations = [], []
    for i, (img, anns, _) in enumerate(replay_split(name)):
        file_name = f"{i:05d}.png"
        cv2.imwrite(os.path.join(image_dir, file_name), img[:, :, ::-1])  # cv2 writes BGR
        images.append(
            {"id": i + 1, "file_name": file_name, "height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )
        for a in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, **a})
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)


MANIFEST = "MANIFEST.json"  # {path relative to the root: sha256 hex digest}
_verified = set()  # roots checked against their manifest in this process


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _dataset_files(root: str) -> List[str]:
    """Every file the dataset consists of, relative to ``root``: annotations and images."""
    files = []
    for name, (num_images, _) in SYNTH_SPLITS.items():
        json_file, image_dir = _paths(root, name)
        files.append(os.path.relpath(json_file, root))
        files += [
            os.path.relpath(os.path.join(image_dir, f"{i:05d}.png"), root)
            for i in range(num_images)
        ]
    return files


def _write_manifest(root: str) -> None:
    manifest = {rel: _sha256(os.path.join(root, rel)) for rel in _dataset_files(root)}
    with open(os.path.join(root, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=0, sort_keys=True)


def _damaged_files(root: str) -> List[str]:
    """Files of the cache at ``root`` that are missing or differ from its manifest (the
    manifest itself, when it is missing or unreadable: an older or interrupted cache)."""
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            manifest = json.load(f)
        if not isinstance(manifest, dict):
            raise ValueError("not a dict")
    except (OSError, ValueError):
        return [MANIFEST]
    damaged = []
    for rel in _dataset_files(root):
        path = os.path.join(root, rel)
        if rel not in manifest or not os.path.isfile(path) or _sha256(path) != manifest[rel]:
            damaged.append(rel)
    return damaged


def publish_folder(tmp: str, root: str, is_complete) -> None:
    """Move a freshly generated folder ``tmp`` to ``root`` in one rename, so readers see a
    whole dataset or none.

    Args:
        is_complete: ``folder -> bool``; a damaged ``root`` is replaced, and when another
            process wins the race its copy is kept only if it is complete.
    """
    if os.path.exists(root) and not is_complete(root):
        shutil.rmtree(root, ignore_errors=True)  # a damaged copy: replace it
    try:
        os.rename(tmp, root)
    except OSError:
        if not is_complete(root):  # someone else won the race only if theirs is whole
            raise


def generate_folder(root: str, write, is_complete, what: str) -> None:
    """Make the dataset folder ``root``: ``write(folder)`` fills a temporary sibling folder,
    which :func:`publish_folder` then moves into place; the temporary folder never stays.

    Args:
        write: ``folder -> None``, writing every file (its completeness marker last).
        is_complete: ``folder -> bool``, see :func:`publish_folder`.
        what: for the log line, e.g. "the synthetic dataset".
    """
    parent = os.path.dirname(root)
    os.makedirs(parent, exist_ok=True)
    logger.info(f"Generating {what} into {root} ...")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(root)}.", dir=parent)
    try:
        write(tmp)
        publish_folder(tmp, root, is_complete)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_complete(root: str) -> bool:
    return os.path.isdir(root) and not _damaged_files(root)


def _write_dataset(folder: str) -> None:
    for name in SYNTH_SPLITS:
        _generate_split(folder, name)
    _write_manifest(folder)  # last: a folder with a manifest is complete


def ensure_synthetic_dataset() -> str:
    """Generate the dataset if it is missing, incomplete or damaged; return its root.

    The first call in a process checks every file against the manifest (about 20 MB to
    hash); later calls trust that check.

    Generation writes into a temporary sibling folder and renames it into place, so a reader
    never sees a half-written dataset, and concurrent processes (multi-process training) do
    not interfere: the first rename wins and the others discard their copy.
    """
    root = synthetic_root()
    if root in _verified and os.path.isdir(root):
        return root
    if os.path.isdir(root):
        damaged = _damaged_files(root)
        if not damaged:
            _verified.add(root)
            return root
        logger.warning(
            f"The synthetic dataset cache {root} is damaged ({len(damaged)} files missing or "
            f"not matching its {MANIFEST}, e.g. {', '.join(damaged[:3])}): regenerating it"
        )
    generate_folder(root, _write_dataset, _is_complete, "the synthetic dataset")
    _verified.add(root)
    return root


def _load(name: str):
    json_file, image_dir = _paths(ensure_synthetic_dataset(), name)
    # The annotation ids come along, so that a warning about one can name it.
    return load_coco_json(json_file, image_dir, name, extra_annotation_keys=["id"])


def register_synthetic_datasets() -> None:
    """Register ``sn_synth_train``/``sn_synth_val`` (generated lazily, on first load).

    Like ``register_coco_instances`` but the data is created on demand; call
    :func:`ensure_synthetic_dataset` before anything reads ``json_file`` directly
    (COCOEvaluator does; ``tools/train_net.py`` and the trainer take care of it).
    """
    root = synthetic_root()
    for name in SYNTH_SPLITS:
        if name in DatasetCatalog.list():
            continue
        json_file, image_dir = _paths(root, name)
        DatasetCatalog.register(name, lambda name=name: _load(name))
        MetadataCatalog.get(name).set(
            json_file=json_file,
            image_root=image_dir,
            evaluator_type="coco",
            thing_classes=[c["name"] for c in CATEGORIES],
            thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(CATEGORIES)},
        )
