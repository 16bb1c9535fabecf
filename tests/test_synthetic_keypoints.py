"""The embedded keypoint data: keypoints where the shapes are, and a flip map that agrees
with what a horizontal flip does to them."""

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from sn_det.data.synthetic import IMAGE_SIZE
from sn_det.data.synthetic_keypoints import KEYPOINT_NAMES, keypoint_polygon_points


def test_keypoints_of_a_rotated_square():
    # A diamond: a square of circumradius 10 at (50, 40), rotated by 45 degrees.
    poly = np.array([[60.0, 40.0], [50.0, 50.0], [40.0, 40.0], [50.0, 30.0]])
    points = dict(zip(KEYPOINT_NAMES, keypoint_polygon_points(poly).tolist()))
    assert points == {
        "top": [50.0, 30.0],
        "right": [60.0, 40.0],
        "bottom": [50.0, 50.0],
        "left": [40.0, 40.0],
        "centre": [50.0, 40.0],
    }


def test_flip_map_matches_a_horizontal_flip():
    meta = MetadataCatalog.get("sn_synth_kpt_train")
    swap = {a: b for pair in meta.keypoint_flip_map for a, b in (pair, pair[::-1])}
    rng = np.random.RandomState(0)
    for _ in range(20):
        poly = rng.uniform(0, IMAGE_SIZE, size=(int(rng.randint(3, 9)), 2))
        flipped = poly.copy()
        flipped[:, 0] = IMAGE_SIZE - flipped[:, 0]
        of_flipped = dict(zip(KEYPOINT_NAMES, keypoint_polygon_points(flipped)))
        for name, (x, y) in zip(KEYPOINT_NAMES, keypoint_polygon_points(poly)):
            np.testing.assert_allclose(of_flipped[swap.get(name, name)], [IMAGE_SIZE - x, y])


def test_every_object_has_its_keypoints_inside_its_box():
    dicts = DatasetCatalog.get("sn_synth_kpt_val")
    assert len(dicts) == 60
    meta = MetadataCatalog.get("sn_synth_kpt_val")
    assert meta.evaluator_type == "coco" and list(meta.keypoint_names) == list(KEYPOINT_NAMES)
    n = 0
    for d in dicts:
        for ann in d["annotations"]:
            kpts = np.asarray(ann["keypoints"]).reshape(-1, 3)
            x, y, w, h = ann["bbox"]
            assert kpts.shape == (5, 3) and np.all(kpts[:, 2] == 2)
            assert np.all((kpts[:, 0] >= x - 1) & (kpts[:, 0] <= x + w + 1)), ann
            assert np.all((kpts[:, 1] >= y - 1) & (kpts[:, 1] <= y + h + 1)), ann
            n += 1
    assert n > 60
