"""The model-family recipes: where their SN layers are, and their tiny embedded-data variants
trained for a few iterations and evaluated by the evaluator the dataset calls for, whose
numbers are checked against pycocotools run here on the written predictions."""

import argparse
import contextlib
import io
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from family_testing import assert_sn_where_expected

from sn_det.config import get_sn_cfg
from sn_det.data.synthetic_keypoints import KEYPOINT_OKS_SIGMAS
from sn_det.engine import Trainer, setup_cfg
from sn_det.modeling import CycleSwitchNorm, build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

POINTREND = os.path.join("projects", "SNPointRend", "configs")
# recipe -> module-name prefixes that must hold SN layers (and no other norm anywhere).
RECIPES = {
    "configs/sn_baselines/retinanet_R_50_FPN_1x_sn.yaml": (
        "backbone.bottom_up.",
        "backbone.fpn_",
        "head.cls_subnet.",
    ),
    "configs/sn_baselines/keypoint_rcnn_R_50_FPN_1x_sn.yaml": (
        "backbone.bottom_up.",
        "backbone.fpn_",
    ),
    f"{POINTREND}/pointrend_rcnn_R_50_FPN_1x_sn.yaml": ("backbone.bottom_up.", "backbone.fpn_"),
    "configs/sn_baselines/panoptic_fpn_R_50_1x_sn.yaml": (
        "backbone.bottom_up.",
        "backbone.fpn_",
        "roi_heads.mask_head.",
        "sem_seg_head.",
    ),
}


def config_adders(path):
    """PointRend's configs need its keys (as projects/SNPointRend/train_net.py adds them)."""
    if "SNPointRend" in path:
        from detectron2.projects.point_rend import add_pointrend_config

        return (add_pointrend_config,)
    return ()


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_has_sn_in_every_norm(recipe):
    cfg = get_sn_cfg(config_adders(recipe))
    cfg.merge_from_file(os.path.join(REPO, recipe))
    cfg.MODEL.DEVICE = "cpu"
    assert not cfg.MODEL.BACKBONE.NAME.startswith("build_sn_")  # detectron2's stock builder
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.BACKBONE.FREEZE_AT == 2
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0 and cfg.INPUT.FORMAT == "RGB"
    model = build_model(cfg)
    assert_sn_where_expected(model, RECIPES[recipe])
    if "retinanet" in recipe:
        assert isinstance(model.head.cls_subnet[1], CycleSwitchNorm)


def first_images(dataset, num_images, folder):
    """Register the first ``num_images`` of a COCO-json dataset as a new dataset, with the
    same metadata: evaluating 60 images costs minutes on a busy 2-core machine."""
    name = f"{dataset}_first{num_images}"
    if name in DatasetCatalog.list():
        return name
    meta = MetadataCatalog.get(dataset)
    with open(meta.json_file) as f:
        data = json.load(f)
    data["images"] = data["images"][:num_images]
    ids = {im["id"] for im in data["images"]}
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    json_file = os.path.join(folder, f"{name}.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    extra = {
        k: v
        for k, v in meta.as_dict().items()
        if k not in ("name", "json_file", "image_root", "evaluator_type")
    }
    register_coco_instances(name, extra, json_file, meta.image_root)
    return name


def train_and_evaluate(config, out, max_iter=4, num_images=12):
    path = os.path.join(REPO, config)
    args = argparse.Namespace(config_file=path, opts=["OUTPUT_DIR", str(out)], resume=False)
    # Generates the embedded data if needed.
    cfg = setup_cfg(args, default=False, config_adders=config_adders(config))
    cfg.defrost()
    if num_images:  # else the whole test set
        cfg.DATASETS.TEST = (first_images(cfg.DATASETS.TEST[0], num_images, str(out)),)
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.train()  # evaluates once at the end (TEST.EVAL_PERIOD 0)
    return cfg, trainer._last_eval_results


def pycocotools_ap(gt_json, results, iou_type, sigmas=None):
    """COCO AP (x100) of ``results`` computed by pycocotools itself."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = [dict(r) for r in results]
    if iou_type == "segm":  # as detectron2 does: areas from the masks, not the boxes
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.array(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return 100 * ev.stats[0]


@pytest.mark.parametrize(
    "config,tasks",
    [
        ("configs/quick_schedules/retinanet_sn_instant_test.yaml", ("bbox",)),
        ("configs/quick_schedules/cascade_mask_rcnn_sn_instant_test.yaml", ("bbox", "segm")),
        ("configs/quick_schedules/keypoint_rcnn_sn_instant_test.yaml", ("bbox", "keypoints")),
        (f"{POINTREND}/quick_schedules/pointrend_rcnn_sn_instant_test.yaml", ("bbox", "segm")),
    ],
)
def test_quick_schedule_trains_and_evaluates_with_coco(config, tasks, tmp_path):
    cfg, results = train_and_evaluate(config, tmp_path)
    assert sorted(results) == sorted(tasks)
    dataset = cfg.DATASETS.TEST[0]
    with open(tmp_path / "inference" / dataset / "coco_instances_results.json") as f:
        predictions = json.load(f)
    assert predictions, "the evaluation saw no detections"
    gt_json = MetadataCatalog.get(dataset).json_file
    for task in tasks:
        sigmas = KEYPOINT_OKS_SIGMAS if task == "keypoints" else None
        want = pycocotools_ap(gt_json, predictions, task, sigmas)
        assert np.isfinite(results[task]["AP"])
        assert abs(results[task]["AP"] - want) < 1e-3, (task, results[task]["AP"], want)


def test_panoptic_quick_schedule_trains_and_evaluates_pq(tmp_path):
    """Panoptic FPN with SN on the embedded panoptic data: trained for 4 iterations, then
    evaluated by the three evaluators of coco_panoptic_seg over the 60 validation images."""
    config = "configs/quick_schedules/panoptic_fpn_sn_instant_test.yaml"
    # The whole test set: the panoptic ground truth is one json for all of it (60 images of
    # 128x128 take seconds).
    cfg, results = train_and_evaluate(config, tmp_path, num_images=None)
    assert sorted(results) == ["bbox", "panoptic_seg", "segm", "sem_seg"]
    pq = results["panoptic_seg"]
    for key in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st"):
        assert np.isfinite(pq[key]) and 0 <= pq[key] <= 100, (key, pq[key])
    assert 0 <= results["sem_seg"]["mIoU"] <= 100
    # COCOPanopticEvaluator's predictions: one per validation image, with the dataset's ids.
    with open(tmp_path / "inference" / cfg.DATASETS.TEST[0] / "predictions.json") as f:
        predictions = json.load(f)["annotations"]
    assert len(predictions) == 60
    stuff_ids = set(MetadataCatalog.get(cfg.DATASETS.TEST[0]).stuff_dataset_id_to_contiguous_id)
    thing_ids = set(MetadataCatalog.get(cfg.DATASETS.TEST[0]).thing_dataset_id_to_contiguous_id)
    for p in predictions:
        assert {s["category_id"] for s in p["segments_info"]} <= (stuff_ids - {0}) | thing_ids
