"""The embedded panoptic data: its three files agree with each other, with the instance
annotations and with the stuff rule, and detectron2's COCOPanopticEvaluator reads them
(ground truth scored as a prediction gets PQ 100; swapped stuff gets stuff PQ 0)."""

import argparse
import json
import os
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from sn_det.data.synthetic import IMAGE_SIZE, replay_split
from sn_det.data.synthetic_panoptic import (
    MIN_STUFF_AREA,
    STUFF_SEGMENT_ID_BASE,
    ensure_synthetic_panoptic_dataset,
    stuff_map,
)
from sn_det.engine import ConfigError, setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL = "sn_synth_panoptic_val"
LIGHT, DARK = 4, 5


def read_ids(path):
    """Segment ids of a COCO panoptic PNG, decoded plainly: id = R + 256 G + 256^2 B."""
    rgb = np.asarray(Image.open(path), dtype=np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def plain_luma(rgb):
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def test_stuff_is_light_where_the_luma_reaches_128_and_slivers_join_the_other():
    # A gradient from black to white across the image: luma crosses 128 near x = 64.
    ramp = np.broadcast_to(np.linspace(0, 255, IMAGE_SIZE)[None, :, None], (128, 128, 3))
    got = stuff_map(ramp)
    want = np.where(plain_luma(ramp) >= 128, LIGHT, DARK)
    assert (want == LIGHT).sum() > MIN_STUFF_AREA and (want == DARK).sum() > MIN_STUFF_AREA
    np.testing.assert_array_equal(got, want)
    # Light only in the last column (128 pixels < MIN_STUFF_AREA): all dark.
    sliver = np.full((128, 128, 3), 100.0)
    sliver[:, -1] = 200.0
    np.testing.assert_array_equal(stuff_map(sliver), DARK)
    np.testing.assert_array_equal(stuff_map(255.0 - sliver), LIGHT)


def test_panoptic_png_json_semantic_and_instances_agree():
    root = ensure_synthetic_panoptic_dataset()
    meta = MetadataCatalog.get(VAL)
    with open(meta.panoptic_json) as f:
        panoptic = json.load(f)
    with open(meta.json_file) as f:
        instances = json.load(f)
    things = {}
    for ann in instances["annotations"]:
        things.setdefault(ann["image_id"], {})[ann["id"]] = ann
    records = {r["image_id"]: r for r in DatasetCatalog.get(VAL)}
    assert len(panoptic["annotations"]) == len(records) == 60
    two_stuff = 0
    for ann, (_, _, clean) in zip(panoptic["annotations"], replay_split("sn_synth_val")):
        ids = read_ids(os.path.join(meta.panoptic_root, ann["file_name"]))
        segments = {s["id"]: s for s in ann["segments_info"]}
        # Every pixel belongs to exactly one listed segment; area and bbox match the PNG.
        assert set(np.unique(ids)) == set(segments)
        for sid, s in segments.items():
            ys, xs = np.nonzero(ids == sid)
            assert s["area"] == len(xs)
            assert s["bbox"] == [
                xs.min(),
                ys.min(),
                xs.max() - xs.min() + 1,
                ys.max() - ys.min() + 1,
            ]
        # Things: the image's instance annotations, same category, the painted area (the
        # generator's own mask) to within the border pixels of re-rasterising the polygon.
        image_things = things.get(ann["image_id"], {})
        thing_ids = {sid for sid in segments if sid < STUFF_SEGMENT_ID_BASE}
        assert thing_ids == set(image_things)
        for sid in thing_ids:
            assert segments[sid]["category_id"] == image_things[sid]["category_id"]
            assert (
                abs(segments[sid]["area"] - image_things[sid]["area"])
                <= 0.03 * segments[sid]["area"]
            )
        # Stuff: the luma rule on the noise-free background (unless a sliver was merged).
        is_stuff = ids >= STUFF_SEGMENT_ID_BASE
        category = ids - STUFF_SEGMENT_ID_BASE
        rule = np.where(plain_luma(clean) >= 128, LIGHT, DARK)
        if min((rule == LIGHT).sum(), (rule == DARK).sum()) >= MIN_STUFF_AREA:
            np.testing.assert_array_equal(category[is_stuff], rule[is_stuff])
            two_stuff += len(np.unique(rule)) == 2
        else:
            assert len(np.unique(category[is_stuff])) == 1
        # The separated semantic labels: 0 on things, 1 light, 2 dark.
        semantic = np.asarray(Image.open(records[ann["image_id"]]["sem_seg_file_name"]))
        want = np.select([~is_stuff, category == LIGHT], [0, 1], 2)
        np.testing.assert_array_equal(semantic, want)
    assert two_stuff >= 10  # the split is not degenerate
    assert os.path.commonpath([root, meta.panoptic_root]) == root


def evaluate_as_predictions(tmp_path, stuff_swap):
    """COCOPanopticEvaluator's PQ table for the ground truth fed back as the model's output
    (detectron2's Panoptic FPN output form: ids 1..k, contiguous categories, isthing)."""
    from detectron2.evaluation import COCOPanopticEvaluator

    ensure_synthetic_panoptic_dataset()
    meta = MetadataCatalog.get(VAL)
    thing_contiguous = meta.thing_dataset_id_to_contiguous_id
    stuff_contiguous = meta.stuff_dataset_id_to_contiguous_id
    with open(meta.panoptic_json) as f:
        panoptic = {a["image_id"]: a for a in json.load(f)["annotations"]}
    evaluator = COCOPanopticEvaluator(VAL, str(tmp_path))
    evaluator.reset()
    for record in DatasetCatalog.get(VAL):
        ann = panoptic[record["image_id"]]
        ids = read_ids(os.path.join(meta.panoptic_root, ann["file_name"]))
        out = np.zeros_like(ids)
        info = []
        for i, s in enumerate(ann["segments_info"], start=1):
            out[ids == s["id"]] = i
            isthing = s["id"] < STUFF_SEGMENT_ID_BASE
            category = s["category_id"]
            if not isthing and stuff_swap:
                category = {LIGHT: DARK, DARK: LIGHT}[category]
            contiguous = (thing_contiguous if isthing else stuff_contiguous)[category]
            info.append({"id": i, "category_id": contiguous, "isthing": isthing})
        evaluator.process([record], [{"panoptic_seg": (torch.from_numpy(out), info)}])
    return evaluator.evaluate()["panoptic_seg"]


def test_ground_truth_scores_pq_100_and_swapped_stuff_scores_0(tmp_path):
    perfect = evaluate_as_predictions(tmp_path / "perfect", stuff_swap=False)
    assert perfect["PQ"] == pytest.approx(100) and perfect["PQ_st"] == pytest.approx(100)
    swapped = evaluate_as_predictions(tmp_path / "swapped", stuff_swap=True)
    assert swapped["PQ_th"] == pytest.approx(100)
    assert swapped["PQ_st"] == pytest.approx(0)
    # All = the mean over the 5 categories: 3 perfect things, 2 stuff at 0.
    assert swapped["PQ"] == pytest.approx(60)


def test_a_panoptic_test_set_without_panopticapi_is_one_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "panopticapi.evaluation", None)  # import fails
    config = os.path.join(REPO, "configs/quick_schedules/panoptic_fpn_sn_instant_test.yaml")
    args = argparse.Namespace(config_file=config, opts=[], resume=False)
    with pytest.raises(ConfigError) as e:
        setup_cfg(args, default=False)
    message = str(e.value)
    assert "sn_synth_panoptic_val" in message and "panopticapi-lite" in message
    assert "\n" not in message
