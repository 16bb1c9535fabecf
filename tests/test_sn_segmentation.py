"""projects/SNSegmentation: the embedded sem_seg data, SN placement in DeepLabV3/V3+, the
multi-scale + flip inference against a plain reference, training + evaluation (mIoU against
a plain computation), checkpoints, ImageNet SN weights, and one-sentence refusals of the
real train_net.py."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from sn_det.checkpoint import SNDetectionCheckpointer
from sn_det.config import get_sn_cfg
from sn_det.data import SEMSEG_SPLITS
from sn_det.layers import SwitchNorm2d, SyncSwitchNorm2d
from sn_det.modeling import check_norm_config
from sn_det.projects.sn_segmentation import (
    SemanticSegmentorWithTTA,
    SNSegTrainer,
    add_deeplab_config,
)

from published_models import published_resnet50

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROJECT = os.path.join(REPO, "projects", "SNSegmentation")
CONFIGS = os.path.join(PROJECT, "configs")
INSTANT = os.path.join(CONFIGS, "quick_schedules", "deeplab_v3_R_50_sn_instant_test.yaml")
DEMO = os.path.join(CONFIGS, "quick_schedules", "deeplab_v3plus_R_50_sn_synth_demo.yaml")
TINY_VAL = "sn_synth_sem_seg_val_first4"


def load_cfg(path, *opts):
    cfg = get_sn_cfg((add_deeplab_config,))
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def tiny_val():
    """The first 4 validation images as their own dataset (keeps evaluations short)."""
    if TINY_VAL not in DatasetCatalog.list():
        DatasetCatalog.register(TINY_VAL, lambda: DatasetCatalog.get("sn_synth_sem_seg_val")[:4])
        meta = MetadataCatalog.get("sn_synth_sem_seg_val")
        MetadataCatalog.get(TINY_VAL).set(
            stuff_classes=meta.stuff_classes,
            ignore_label=meta.ignore_label,
            evaluator_type=meta.evaluator_type,
        )
    return TINY_VAL


def test_embedded_sem_seg_data_is_a_standard_sem_seg_dataset():
    for name, instance_split in SEMSEG_SPLITS.items():
        records = DatasetCatalog.get(name)
        assert len(records) == len(DatasetCatalog.get(instance_split))
        meta = MetadataCatalog.get(name)
        assert meta.evaluator_type == "sem_seg" and meta.ignore_label == 255
        assert meta.stuff_classes == ["background", "circle", "square", "triangle"]
    rec = DatasetCatalog.get("sn_synth_sem_seg_val")[0]
    image = read_image(rec["file_name"], format="RGB")
    label = np.asarray(Image.open(rec["sem_seg_file_name"]))
    assert label.shape == image.shape[:2] == (rec["height"], rec["width"])
    assert set(np.unique(label)) <= {0, 1, 2, 3} and (label > 0).any()
    # Shapes are painted far from their background colour: labelled pixels differ clearly
    # from the background's mean colour.
    background = image[label == 0].mean(0)
    assert np.abs(image[label > 0] - background).sum(1).mean() > 50


def count_sn(model, cls=SwitchNorm2d):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize(
    "config, head_norms",
    [
        # DeepLabV3: ASPP 1x1 + 3 atrous + projection (the image-pooling conv has no norm).
        (INSTANT, 5),
        # DeepLabV3+: the ASPP's 5, the res2 projection, the two fuse convs.
        (DEMO, 5 + 1 + 2),
    ],
)
def test_sn_layer_count(config, head_norms):
    model = SNSegTrainer.build_model(load_cfg(config))
    # ResNet-50, basic stem: stem 1, 16 bottlenecks x 3, 4 shortcuts.
    backbone = 1 + 16 * 3 + 4
    assert count_sn(model.backbone) == backbone
    assert count_sn(model.sem_seg_head) == head_norms
    assert count_sn(model) == backbone + head_norms
    aspp = (
        model.sem_seg_head.aspp
        if config == INSTANT
        else model.sem_seg_head.decoder["res5"]["project_conv"]
    )
    assert aspp.convs[-1][1].norm is None  # image pooling: 1x1 map, no norm


def test_recipes_build_with_sn_or_syncsn_everywhere():
    recipes = {
        "ADE20K/deeplab_v3_R_50_dilated8_sn.yaml": (SwitchNorm2d, 53 + 5),
        "ADE20K/deeplab_v3_R_50_dilated8_syncsn.yaml": (SyncSwitchNorm2d, 53 + 5),
        "ADE20K/deeplab_v3plus_R_50_sn.yaml": (SwitchNorm2d, 53 + 8),
        "Cityscapes/deeplab_v3_R_50_sn.yaml": (SwitchNorm2d, 53 + 5),
        "Cityscapes/deeplab_v3plus_R_50_sn.yaml": (SwitchNorm2d, 53 + 8),
    }
    for path, (cls, n) in recipes.items():
        cfg = load_cfg(os.path.join(CONFIGS, path))
        check_norm_config(cfg)
        model = SNSegTrainer.build_model(cfg)
        assert count_sn(model, cls) == n, path
        assert count_sn(model) == n, path  # nothing else normalises
    # The authors' dilated8 encoder: output stride 8, inputs padded to it.
    cfg = load_cfg(os.path.join(CONFIGS, "ADE20K/deeplab_v3_R_50_dilated8_sn.yaml"))
    model = SNSegTrainer.build_model(cfg)
    assert model.backbone.output_shape()["res5"].stride == 8
    assert model.backbone.size_divisibility == 8


def test_imagenet_sn_weights_fill_the_recipe_backbone(tmp_path):
    """The ADE20K recipe's ResNet takes the published ImageNet SN layout (7x7 stem) whole."""
    ckpt = published_resnet50(using_bn=True)  # {"state_dict": ..., ...} as published
    published = ckpt["state_dict"]
    path = str(tmp_path / "resnet50_sn_8x32.pth")
    torch.save(ckpt, path)
    cfg = load_cfg(os.path.join(CONFIGS, "ADE20K/deeplab_v3_R_50_dilated8_sn.yaml"))
    model = SNSegTrainer.build_model(cfg)
    SNDetectionCheckpointer(model).load(path)
    state = model.state_dict()
    # A few plain correspondences (published name -> detectron2 name).
    pairs = {
        "module.conv1.weight": "backbone.stem.conv1.weight",
        "module.sn1.mean_weight": "backbone.stem.conv1.norm.mean_weight",
        "module.layer3.5.conv2.weight": "backbone.res4.5.conv2.weight",
        "module.layer4.0.downsample.1.running_var": "backbone.res5.0.shortcut.norm.running_var",
    }
    for old, new in pairs.items():
        assert torch.equal(state[new], published[old].reshape(state[new].shape)), new


def test_padding_to_the_output_stride_lets_any_image_size_train():
    cfg = load_cfg(INSTANT)
    model = SNSegTrainer.build_model(cfg).train()
    inputs = [
        {
            "image": torch.randint(0, 255, (3, h, w), dtype=torch.uint8),
            "sem_seg": torch.randint(0, 4, (h, w)),
        }
        for h, w in ((100, 90), (77, 130))
    ]
    losses = model(inputs)
    assert torch.isfinite(losses["loss_sem_seg"])


def plain_resize(image, short, max_size):
    """ResizeShortestEdge's size rule and PIL bilinear resize, written out."""
    h, w = image.shape[:2]
    scale = short / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > max_size:
        nh, nw = nh * max_size / max(nh, nw), nw * max_size / max(nh, nw)
    nh, nw = int(nh + 0.5), int(nw + 0.5)
    return np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))


def test_multiscale_flip_inference_matches_a_plain_reference():
    torch.manual_seed(0)
    cfg = load_cfg(INSTANT, "TEST.AUG.MIN_SIZES", "(64, 96, 160)", "TEST.AUG.FLIP", "True")
    model = SNSegTrainer.build_model(cfg).eval()
    with torch.no_grad():  # random switch weights and affine, so flips and scales matter
        for m in model.modules():
            if isinstance(m, SwitchNorm2d):
                m.mean_weight.normal_()
                m.weight.uniform_(0.5, 1.5)
        model.sem_seg_head.predictor.weight.normal_(0, 0.1)
    rng = np.random.RandomState(0)
    image = rng.randint(0, 255, size=(96, 120, 3)).astype(np.uint8)
    inputs = {
        "image": torch.from_numpy(image.transpose(2, 0, 1).copy()),
        "height": 96,
        "width": 120,
    }

    with torch.no_grad():
        got = SemanticSegmentorWithTTA(cfg, model)([inputs])[0]["sem_seg"]
        expected = 0
        for short in (64, 96, 160):
            resized = plain_resize(image, short, 1000)
            for flip in (False, True):
                x = resized[:, ::-1] if flip else resized
                x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
                out = model([{"image": x, "height": 96, "width": 120}])[0]["sem_seg"]
                prob = out.softmax(0)
                expected = expected + (prob.flip(2) if flip else prob)
        expected = expected / 6
    assert got.shape == (4, 96, 120)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # One scale at the original size without flip is the plain prediction.
    cfg1 = load_cfg(INSTANT, "TEST.AUG.MIN_SIZES", "(96,)", "TEST.AUG.FLIP", "False")
    with torch.no_grad():
        single = SemanticSegmentorWithTTA(cfg1, model)([inputs])[0]["sem_seg"]
        plain = model([inputs])[0]["sem_seg"].softmax(0)
    torch.testing.assert_close(single, plain, rtol=0, atol=1e-6)


def plain_miou(model, dataset):
    """Mean IoU over the classes present in prediction or ground truth, written out."""
    num_classes = len(MetadataCatalog.get(dataset).stuff_classes)
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    with torch.no_grad():
        for rec in DatasetCatalog.get(dataset):
            image = read_image(rec["file_name"], format="RGB")
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            pred = (
                model([{"image": x, "height": 128, "width": 128}])[0]["sem_seg"].argmax(0).numpy()
            )
            gt = np.asarray(Image.open(rec["sem_seg_file_name"]))
            for c in range(num_classes):
                inter[c] += np.sum((pred == c) & (gt == c))
                union[c] += np.sum((pred == c) | (gt == c))
    return 100 * np.mean(inter[union > 0] / union[union > 0])


def test_training_evaluation_tta_and_checkpoint_round_trip(tmp_path):
    cfg = load_cfg(
        INSTANT,
        "DATASETS.TEST",
        f"('{tiny_val()}',)",
        "OUTPUT_DIR",
        str(tmp_path),
        "TEST.AUG.ENABLED",
        "True",
    )
    cfg.freeze()
    trainer = SNSegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER  # finished
    # The final evaluation's metrics, as written to metrics.json.
    metrics = {k: v for k, (v, _) in trainer.storage.latest().items()}
    model = trainer.model.eval()
    assert metrics[f"{TINY_VAL}/sem_seg/mIoU"] == pytest.approx(
        plain_miou(model, TINY_VAL), abs=1e-6
    )
    assert 0 <= metrics[f"{TINY_VAL}_TTA/sem_seg/mIoU"] <= 100
    # A few iterations predict mostly background; with a random classifier every class
    # occurs, and the evaluator must still agree with the plain count.
    scrambled = SNSegTrainer.build_model(cfg).eval()
    scrambled.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.manual_seed(0)
        scrambled.sem_seg_head.predictor.weight.normal_(0, 1.0)
    res = SNSegTrainer.test(cfg, scrambled)[TINY_VAL]["sem_seg"]
    assert res["mIoU"] == pytest.approx(plain_miou(scrambled, TINY_VAL), abs=1e-6)

    # Round trip: a fresh model loaded from model_final.pth predicts exactly the same.
    final = os.path.join(str(tmp_path), "model_final.pth")
    fresh = SNSegTrainer.build_model(cfg)
    SNDetectionCheckpointer(fresh).load(final)
    fresh.eval()
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randint(0, 255, (3, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(
            fresh([{"image": x}])[0]["sem_seg"], model([{"image": x}])[0]["sem_seg"], rtol=0, atol=0
        )


def run_train_net(*args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(PROJECT, "train_net.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, env, words",
    [
        (
            [
                "--config-file",
                os.path.join(CONFIGS, "ADE20K", "deeplab_v3_R_50_dilated8_sn.yaml"),
                "MODEL.WEIGHTS",
                "",
                "MODEL.DEVICE",
                "cpu",
            ],
            {"DETECTRON2_DATASETS": "/nonexistent/datasets"},
            ["ade20k_sem_seg_train", "does not exist", "ADEChallengeData2016"],
        ),
        (
            ["--config-file", INSTANT, "MODEL.SEM_SEG_HEAD.NORM", "SwitchNormm"],
            {},
            ["MODEL.SEM_SEG_HEAD.NORM", "'SwitchNormm' is not a known norm type"],
        ),
        (
            ["--config-file", INSTANT, "MODEL.RESNETS.NORM", "SwitchNormm"],
            {},
            ["MODEL.RESNETS.NORM", "'SwitchNormm' is not a known norm type"],
        ),
    ],
)
def test_bad_input_is_one_sentence(tmp_path, args, env, words):
    proc = run_train_net(*args, "OUTPUT_DIR", str(tmp_path), env=env)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "Traceback" not in proc.stderr
    for w in words:
        assert w in last


def test_test_sets_without_a_known_evaluator_are_refused_up_front():
    """SNSegTrainer evaluates semantic segmentation itself and hands other test sets to
    sn_det's Trainer, whose check then applies to them (before training, not after)."""
    from sn_det.engine import Trainer

    for name, evaluator_type in [("seg_check_sem", "sem_seg"), ("seg_check_none", None)]:
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda: [])
            if evaluator_type:
                MetadataCatalog.get(name).evaluator_type = evaluator_type
    cfg = get_sn_cfg()
    cfg.DATASETS.TEST = ("seg_check_sem",)
    SNSegTrainer.check_evaluators(cfg)
    Trainer.check_evaluators(cfg)
    cfg.DATASETS.TEST = ("seg_check_sem", "seg_check_none")
    for trainer in (SNSegTrainer, Trainer):
        with pytest.raises(ValueError, match="'seg_check_none' has evaluator_type None"):
            trainer.check_evaluators(cfg)

    class OwnEvaluators(Trainer):  # a subclass that builds its own evaluators decides alone
        @classmethod
        def build_evaluator(cls, cfg, dataset_name, output_folder=None):
            raise NotImplementedError

    OwnEvaluators.check_evaluators(cfg)
