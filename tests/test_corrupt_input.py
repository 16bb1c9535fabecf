"""Damaged and wrong input through tools/train_net.py: one sentence naming the file and exit 2
(or, for the dataset cache, a repair with a warning)."""

import json
import logging
import os
import pickle
import shutil

import cv2
import numpy as np
import pytest
import torch

from sn_det.data import synthetic
from sn_det.data.mapper import CheckedMapper, DatasetFileError
from tool_runner import (
    INSTANT,
    one_sentence_exit_2,
    one_step,
    run_tool,
    setup_cfg_here,
    train_net,
)

# --- checkpoints given as MODEL.WEIGHTS ----------------------------------------------------


def _text_pkl(path):
    with open(path, "w") as f:
        f.write("these are not weights\n" * 5)


def _non_array_pkl(path):
    with open(path, "wb") as f:
        pickle.dump({"model": {"backbone.stem.conv1.weight": "oops"}, "__author__": "me"}, f)


def _torchvision_resnet18(path):
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), path)


BAD_WEIGHTS = [
    ("text.pkl", _text_pkl, "is not a readable checkpoint"),
    ("strings.pkl", _non_array_pkl, "'backbone.stem.conv1.weight' is a str, not a weight"),
    ("resnet18.pth", _torchvision_resnet18, "fills only 0.0% of the model weights"),
]


def test_bad_weights_file_is_one_sentence(tmp_path):
    name, make, expected = BAD_WEIGHTS[-1]
    path = str(tmp_path / name)
    make(path)
    code, log = train_net(
        "--config-file", INSTANT, "MODEL.WEIGHTS", path, *one_step(tmp_path / "out")
    )
    one_sentence_exit_2(code, log, path, expected)
    # ~77 lines of "Skip loading" / missing-key warnings are not printed before refusing.
    assert "Some model parameters or buffers are not found" not in log


@pytest.mark.parametrize("name,make,expected", BAD_WEIGHTS, ids=[w[0] for w in BAD_WEIGHTS])
def test_bad_weights_are_refused_by_the_trainers_checkpointer(tmp_path, name, make, expected):
    # What train_net loads MODEL.WEIGHTS with, in this process (the command's one-sentence
    # exit for this error is checked above; a command start costs ~8 s on these CPUs).
    from sn_det.checkpoint import CheckpointConversionError, SNDetectionCheckpointer
    from sn_det.engine import Trainer

    path = str(tmp_path / name)
    make(path)
    cfg = setup_cfg_here(["MODEL.WEIGHTS", path])
    checkpointer = SNDetectionCheckpointer(
        Trainer.build_model(cfg), str(tmp_path), min_loaded_fraction=cfg.MODEL.MIN_LOADED_FRACTION
    )
    with pytest.raises(CheckpointConversionError) as e:
        checkpointer.resume_or_load(path, resume=False)
    assert path in str(e.value) and expected in str(e.value)


# --- config checks (at setup, before any worker starts) ------------------------------------


def test_config_refused_with_the_fix():
    code, log = train_net(
        "--config-file", INSTANT, "MODEL.SN.USING_MOVING_AVERAGE", "False", timeout=120
    )
    one_sentence_exit_2(code, log, "add TEST.SN_BATCH_AVG.ENABLED True")


def test_a_batch_that_does_not_divide_over_the_processes_is_refused_at_setup():
    from sn_det.engine import ConfigError

    with pytest.raises(ConfigError) as e:
        setup_cfg_here(num_gpus=3)
    assert "SOLVER.IMS_PER_BATCH 2 does not divide evenly over 3 processes" in str(e.value)


@pytest.mark.parametrize(
    "eval_only,opts,expected",
    [
        (False, ["MODEL.SN.MOMENTUM", "1.5"], "MODEL.SN.MOMENTUM = 1.5 is not in [0, 1]"),
        (False, ["MODEL.MIN_LOADED_FRACTION", "2.0"], "is not a fraction in [0, 1]"),
        (False, ["MODEL.SN.EPS", "0.0"], "MODEL.SN.EPS = 0.0 must be > 0"),
        (
            True,
            ["TEST.SN_BATCH_AVG.ENABLED", "True", "TEST.SN_BATCH_AVG.NUM_ITER", "0"],
            "batch averaging needs at least one batch",
        ),
        (  # evaluation reads the training sets' metadata (keypoint flip maps), not files
            True,
            ["DATASETS.TRAIN", "('sn_synth_trian',)"],
            "DATASETS.TRAIN names 'sn_synth_trian', which is not a registered dataset",
        ),
    ],
)
def test_config_values_refused_at_setup(eval_only, opts, expected):
    from sn_det.engine import ConfigError

    with pytest.raises(ConfigError) as e:
        setup_cfg_here(opts, eval_only=eval_only)
    assert expected in str(e.value)


def test_config_files_that_are_not_yacs_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("_BASE_: x.yaml\nMODEL:\n  SN: [\n")
    code, log = train_net("--config-file", str(bad), timeout=120)
    one_sentence_exit_2(code, log, f"{bad} is not valid YAML at line 4, column 1")

    from sn_det.engine import ConfigError

    # A syntax error in a _BASE_ names the base; an empty file or a list is not a config.
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {bad}\n")
    with pytest.raises(ConfigError, match=f"^{bad} is not valid YAML at line 4, column 1"):
        setup_cfg_here(config_file=child)
    for text in ("", "- MODEL\n"):
        child.write_text(text)
        with pytest.raises(ConfigError, match=r"\(or a _BASE_ of it\) is not a detectron2 con"):
            setup_cfg_here(config_file=child)
    lazy = os.path.join(
        os.path.dirname(INSTANT), "..", "lazy", "mask_rcnn_R_18_FPN_sn_synthetic.py"
    )
    with pytest.raises(ConfigError, match=r"Python \(LazyConfig\) config.*lazyconfig_train_net"):
        setup_cfg_here(config_file=lazy)


def test_batch_average_mode_with_the_pass_is_accepted():
    from argparse import Namespace

    from sn_det.engine import setup_cfg

    args = Namespace(
        config_file=INSTANT,
        opts=["MODEL.SN.USING_MOVING_AVERAGE", "False", "TEST.SN_BATCH_AVG.ENABLED", "True"],
        num_gpus=2,
        num_machines=1,
        eval_only=False,
        resume=False,
    )
    cfg = setup_cfg(args, default=False)
    assert not cfg.MODEL.SN.USING_MOVING_AVERAGE


# --- the synthetic dataset cache -----------------------------------------------------------


def test_damaged_cache_is_regenerated(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SN_DET_DATASETS", str(tmp_path))
    monkeypatch.setattr(synthetic, "_verified", set())
    root = synthetic.ensure_synthetic_dataset()
    ann = os.path.join(root, "annotations", "instances_val.json")
    img = os.path.join(root, "train", "00007.png")
    with open(ann, "rb") as f:
        ann_bytes = f.read()
    pixels = cv2.imread(img)

    with open(ann, "r+b") as f:
        f.truncate(len(ann_bytes) // 2)  # an interrupted write
    shutil.copy(os.path.join(root, "train", "00008.png"), img)  # an overwritten image
    monkeypatch.setattr(synthetic, "_verified", set())  # a new process
    with caplog.at_level(logging.WARNING, logger="sn_det.data.synthetic"):
        synthetic.ensure_synthetic_dataset()
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert f"{root} is damaged (2 files" in warning
    assert "annotations/instances_val.json" in warning and "train/00007.png" in warning
    with open(ann, "rb") as f:
        assert f.read() == ann_bytes
    assert np.array_equal(cv2.imread(img), pixels)
    assert synthetic._damaged_files(root) == []


def test_train_net_repairs_a_damaged_cache(tmp_path):
    env = {"SN_DET_DATASETS": str(tmp_path)}
    run_tool(
        "-c",
        "import sn_det.data as d; d.ensure_synthetic_dataset()",
        env=env,
        cwd=None,
        timeout=120,
    ).check_returncode()
    root = os.path.join(str(tmp_path), f"sn_synth_{synthetic.VERSION}")
    ann = os.path.join(root, "annotations", "instances_train.json")
    with open(ann, "r+b") as f:
        f.truncate(1000)
    code, log = train_net("--config-file", INSTANT, *one_step(tmp_path / "out"), env=env)
    assert code == 0, log[-3000:]
    assert f"{root} is damaged (1 files missing or not matching its MANIFEST.json" in log
    with open(ann) as f:
        json.load(f)


# --- a COCO-style dataset with a corrupt image or an empty segmentation ---------------------


def coco_style_dataset(folder, num_images=4):
    """A tiny copy of the synthetic data laid out as $DETECTRON2_DATASETS/coco/ (train2017),
    with COCO's categories, so that detectron2's builtin coco_2017_train reads it."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    src_root = synthetic.ensure_synthetic_dataset()
    with open(os.path.join(src_root, "annotations", "instances_train.json")) as f:
        data = json.load(f)
    images = data["images"][:num_images]
    keep = {im["id"] for im in images}
    coco = os.path.join(folder, "coco")
    os.makedirs(os.path.join(coco, "annotations"))
    os.makedirs(os.path.join(coco, "train2017"))
    for im in images:
        shutil.copy(
            os.path.join(src_root, "train", im["file_name"]),
            os.path.join(coco, "train2017", im["file_name"]),
        )
    data = {
        "images": images,
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        "categories": [{"id": c["id"], "name": c["name"]} for c in COCO_CATEGORIES if c["isthing"]],
    }
    return coco, data


def _write(coco, data):
    with open(os.path.join(coco, "annotations", "instances_train2017.json"), "w") as f:
        json.dump(data, f)


def _train_on(folder):
    return train_net(
        "--config-file",
        INSTANT,
        "DATASETS.TRAIN",
        "('coco_2017_train',)",
        "DATASETS.TEST",
        "()",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "100",
        "OUTPUT_DIR",
        os.path.join(folder, "out"),
        env={"DETECTRON2_DATASETS": folder},
    )


def test_corrupt_image_names_the_file(tmp_path):
    coco, data = coco_style_dataset(str(tmp_path))
    _write(coco, data)
    bad = os.path.join(coco, "train2017", data["images"][2]["file_name"])
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 3)  # "image file is truncated"
    code, log = _train_on(str(tmp_path))
    one_sentence_exit_2(code, log, f"error: {bad} is not a readable image", "truncated")


def test_empty_segmentation_refuses_training_before_the_first_step(tmp_path):
    coco, data = coco_style_dataset(str(tmp_path))
    first = data["images"][0]
    ann = next(a for a in data["annotations"] if a["image_id"] == first["id"])
    ann["segmentation"] = []
    _write(coco, data)
    code, log = _train_on(str(tmp_path))
    image = os.path.join(coco, "train2017", first["file_name"])
    # detectron2's COCO loader drops annotation ids: the instance is named by its position.
    position = [a for a in data["annotations"] if a["image_id"] == first["id"]].index(ann)
    count = sum(a["image_id"] == first["id"] for a in data["annotations"])
    one_sentence_exit_2(
        code,
        log,
        f"error: {image} has an instance without a segmentation (annotation #{position} "
        f"(from 0) of the image's {count}; 1 such instance(s)",
        "MASK_ON",
    )
    assert "Starting training from iteration" not in log  # refused before the first step


def test_builtin_coco_name_over_other_categories_is_one_sentence(tmp_path):
    coco, data = coco_style_dataset(str(tmp_path))
    data["categories"] = [dict(c, name=f"part_{c['id']}") for c in data["categories"]]
    _write(coco, data)
    code, log = _train_on(str(tmp_path))
    json_file = os.path.join(coco, "annotations", "instances_train2017.json")
    one_sentence_exit_2(
        code,
        log,
        f"error: dataset 'coco_2017_train' is registered with other thing_classes than "
        f"{json_file} holds",
        "register_coco_instances",
    )


def test_builtin_coco_test_set_over_other_categories_is_refused_before_training(tmp_path):
    coco, data = coco_style_dataset(str(tmp_path))
    _write(coco, data)
    data["categories"] = [dict(c, name=f"part_{c['id']}") for c in data["categories"]]
    val_json = os.path.join(coco, "annotations", "instances_val2017.json")
    with open(val_json, "w") as f:
        json.dump(data, f)
    os.symlink(os.path.join(coco, "train2017"), os.path.join(coco, "val2017"))
    code, log = train_net(
        "--config-file", INSTANT, "DATASETS.TRAIN", "('coco_2017_train',)",
        "DATASETS.TEST", "('coco_2017_val',)", "OUTPUT_DIR", str(tmp_path / "out"),
        env={"DETECTRON2_DATASETS": str(tmp_path)},
    )  # fmt: skip
    one_sentence_exit_2(
        code,
        log,
        f"error: {val_json}, the json_file of dataset 'coco_2017_val', is of other categories "
        "(80, e.g. ['part_1', 'part_2', 'part_3']) than the 80 registered",
        "register_coco_instances",
    )
    assert "Starting training" not in log


def test_truncated_training_json_names_the_file(tmp_path):
    coco, data = coco_style_dataset(str(tmp_path))
    _write(coco, data)
    ann = os.path.join(coco, "annotations", "instances_train2017.json")
    with open(ann, "r+b") as f:
        f.truncate(os.path.getsize(ann) // 2)  # an interrupted download
    code, log = _train_on(str(tmp_path))
    one_sentence_exit_2(
        code, log, f"error: {ann}, the json_file of dataset 'coco_2017_train', is not valid JSON"
    )
    assert "Starting training from iteration" not in log


UNREADABLE_JSON = [
    (b'{"images": [', "is not valid JSON"),
    (b'{"images": "\xff"}', "is not UTF-8 text"),
    (b"[1, 2]", "not COCO annotations (a list without 'images')"),
]


@pytest.mark.parametrize("content,reason", UNREADABLE_JSON, ids=["cut", "latin-1", "list"])
def test_unreadable_json_is_named_with_the_reason(tmp_path, content, reason):
    # The check train_net runs at setup, in this process, on a dataset of its own name (the
    # command's refusal is checked below; a command start costs ~8 s on these CPUs).
    from detectron2.data.datasets import register_coco_instances

    from sn_det.data.annotation_files import check_annotation_files
    from sn_det.data.mapper import DatasetFileError

    path = str(tmp_path / "instances.json")
    with open(path, "wb") as f:
        f.write(content)
    name = f"unreadable_{tmp_path.name}"
    register_coco_instances(name, {}, path, str(tmp_path))
    with pytest.raises(DatasetFileError) as e:
        check_annotation_files([name])
    assert str(e.value).startswith(f"{path}, the json_file of dataset {name!r}, is ")
    assert reason in str(e.value)


def test_unreadable_test_set_json_is_refused_before_training(tmp_path):
    content, reason = UNREADABLE_JSON[0]
    coco, data = coco_style_dataset(str(tmp_path))
    _write(coco, data)
    os.makedirs(os.path.join(coco, "val2017"))
    val = os.path.join(coco, "annotations", "instances_val2017.json")
    with open(val, "wb") as f:
        f.write(content)
    code, log = train_net(
        "--config-file",
        INSTANT,
        "DATASETS.TRAIN",
        "('coco_2017_train',)",
        "DATASETS.TEST",
        "('coco_2017_val',)",
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        env={"DETECTRON2_DATASETS": str(tmp_path)},
    )
    one_sentence_exit_2(
        code, log, f"error: {val}, the json_file of dataset 'coco_2017_val'", reason
    )
    assert "Starting training from iteration" not in log


def test_checked_mapper_names_annotation_ids_and_keeps_the_rest():
    seen = []
    mapper = CheckedMapper(lambda d: seen.append(d) or d, mask_on=True)
    anns = [
        {"id": 11, "segmentation": [[0, 0, 4, 0, 4, 4]], "iscrowd": 0},
        {"id": 12, "segmentation": [], "iscrowd": 0},
        {"id": 13, "iscrowd": 0},  # load_coco_json drops an empty segmentation entirely
        {"id": 14, "segmentation": {"counts": "x", "size": [4, 4]}, "iscrowd": 1},
    ]
    out = mapper({"file_name": "a.png", "annotations": anns})
    assert [a["id"] for a in out["annotations"]] == [11, 14]
    boxes_only = CheckedMapper(lambda d: d, mask_on=False)
    assert len(boxes_only({"file_name": "a.png", "annotations": anns})["annotations"]) == 4


def test_dataset_file_error_survives_a_dataloader_worker():
    # torch re-creates the exception in the main process from the worker's traceback text.
    text = (
        "Caught DatasetFileError in DataLoader worker process 0.\nOriginal Traceback (most "
        'recent call last):\n  File "x.py", line 1, in f\nsn_det.data.mapper.DatasetFileError: '
        "/d/a.png is not a readable image (OSError: image file is truncated)\n"
    )
    assert str(DatasetFileError(text)) == (
        "/d/a.png is not a readable image (OSError: image file is truncated)"
    )


def test_eval_only_needs_no_training_annotations(tmp_path):
    """--eval-only reads only the test sets: a machine with COCO's val2017 alone evaluates."""
    coco, data = coco_style_dataset(str(tmp_path), num_images=2)
    os.rename(os.path.join(coco, "train2017"), os.path.join(coco, "val2017"))
    with open(os.path.join(coco, "annotations", "instances_val2017.json"), "w") as f:
        json.dump(data, f)
    opts = ["DATASETS.TRAIN", "('coco_2017_train',)", "DATASETS.TEST", "('coco_2017_val',)"]
    opts += ["OUTPUT_DIR", str(tmp_path / "out")]
    env = {"DETECTRON2_DATASETS": str(tmp_path)}
    code, log = train_net("--config-file", INSTANT, "--eval-only", *opts, env=env)
    assert code == 0, log[-3000:]
    assert "Evaluation results for bbox" in log
    # Training does need them, and says so before anything starts.
    code, log = train_net("--config-file", INSTANT, *opts, env=env)
    train_json = os.path.join(coco, "annotations", "instances_train2017.json")
    one_sentence_exit_2(code, log, "DATASETS.TRAIN names 'coco_2017_train'", train_json)


REGISTER_AND_TRAIN = """
import sys
from detectron2.data import DatasetCatalog, MetadataCatalog
from sn_det.data import synthetic  # registers sn_synth_val
from sn_det.tools.train_net import invoke_main

DatasetCatalog.register("my_val", lambda: DatasetCatalog.get("sn_synth_val"))
MetadataCatalog.get("my_val").thing_classes = MetadataCatalog.get("sn_synth_val").thing_classes
sys.argv = ["train_net.py"] + sys.argv[1:]
invoke_main()
"""


def test_a_test_set_without_an_evaluator_is_refused_before_training(tmp_path):
    proc = run_tool(
        "-c", REGISTER_AND_TRAIN, "--config-file", INSTANT, "DATASETS.TEST", "('my_val',)",
        *one_step(tmp_path / "out")[:2], "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    one_sentence_exit_2(proc.returncode, log, "dataset 'my_val' has evaluator_type None")
    assert "Starting training" not in log
