"""Trainer.build_evaluator picks detectron2's evaluators by the dataset's evaluator_type."""

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import (
    COCOEvaluator,
    COCOPanopticEvaluator,
    DatasetEvaluators,
    PascalVOCDetectionEvaluator,
    SemSegEvaluator,
)

from sn_det.config import get_sn_cfg
from sn_det.data import ensure_synthetic_dataset
from sn_det.engine import Trainer


def register(name, **meta):
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(**meta)
    return name


@pytest.fixture
def cfg(tmp_path):
    cfg = get_sn_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.TEST.KEYPOINT_OKS_SIGMAS = [0.05, 0.05, 0.05, 0.1]
    return cfg


def test_coco_gets_coco_evaluator_with_the_configured_keypoint_sigmas(cfg, tmp_path):
    ensure_synthetic_dataset()
    evaluator = Trainer.build_evaluator(cfg, "sn_synth_val")
    assert type(evaluator) is COCOEvaluator
    assert list(evaluator._kpt_oks_sigmas) == [0.05, 0.05, 0.05, 0.1]
    assert evaluator._output_dir == str(tmp_path / "inference" / "sn_synth_val")


def test_sem_seg_gets_sem_seg_evaluator(cfg):
    name = register(
        "test_eval_semseg", evaluator_type="sem_seg", stuff_classes=["a", "b"], ignore_label=255
    )
    evaluator = Trainer.build_evaluator(cfg, name)
    assert type(evaluator) is SemSegEvaluator


def test_panoptic_gets_sem_seg_coco_and_panoptic_evaluators(cfg):
    root = ensure_synthetic_dataset()
    name = register(
        "test_eval_panoptic",
        evaluator_type="coco_panoptic_seg",
        json_file=f"{root}/annotations/instances_val.json",
        stuff_classes=["things", "sky"],
        ignore_label=255,
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
        stuff_dataset_id_to_contiguous_id={4: 0},
    )
    evaluator = Trainer.build_evaluator(cfg, name)
    assert type(evaluator) is DatasetEvaluators
    assert [type(e) for e in evaluator._evaluators] == [
        SemSegEvaluator,
        COCOEvaluator,
        COCOPanopticEvaluator,
    ]


def test_pascal_voc_gets_its_evaluator(cfg, tmp_path):
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    name = register(
        "test_eval_voc",
        evaluator_type="pascal_voc",
        dirname=str(tmp_path),
        split="test",
        year=2007,
        thing_classes=["a"],
    )
    assert type(Trainer.build_evaluator(cfg, name)) is PascalVOCDetectionEvaluator


@pytest.mark.parametrize("meta", [{"evaluator_type": "mystery"}, {}])
def test_unknown_evaluator_type_is_one_sentence(cfg, meta):
    name = register(f"test_eval_unknown_{len(meta)}", **meta)
    shown = repr(meta.get("evaluator_type"))
    with pytest.raises(ValueError, match=rf"^dataset '{name}' has evaluator_type {shown}, for "):
        Trainer.build_evaluator(cfg, name)
