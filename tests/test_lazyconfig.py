"""SN in detectron2's LazyConfig: "SN" names and SNNorm factories, the optimizer helper's
weight-decay rules, LazyConfig save/load, and a short run of tools/lazyconfig_train_net.py."""

import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from sn_det import model_zoo
from sn_det.layers import SNNorm, SwitchNorm2d
from tool_runner import REPO, TOOLS, run_tool

LAZY_TRAIN_NET = os.path.join(TOOLS, "lazyconfig_train_net.py")
TINY = "lazy/mask_rcnn_R_18_FPN_sn_synthetic.py"


def _sn_layers(model):
    return [m for m in model.modules() if isinstance(m, SwitchNorm2d)]


def test_names_and_factories_build_sn_layers_and_survive_save_load(tmp_path):
    cfg = model_zoo.get_config(TINY)  # "SN" names resolved into L(SNNorm)(...)
    model = instantiate(cfg.model)
    layers = _sn_layers(model)
    # stem 1 + 8 basic blocks x 2 + 3 shortcuts, FPN 4 lateral + 4 output, mask head 1 conv
    # (its last conv_dims entry is the deconvolution, which has no norm)
    assert len(layers) == 1 + 16 + 3 + 8 + 1
    assert {m.momentum for m in layers} == {0.99, 0.997}  # factory where set, default elsewhere
    path = str(tmp_path / "cfg.yaml")
    LazyConfig.save(cfg, path)
    again = instantiate(LazyConfig.load(path).model)
    assert [type(m) for m in again.modules()] == [type(m) for m in model.modules()]
    assert [m.momentum for m in _sn_layers(again)] == [m.momentum for m in layers]


def test_optimizer_helper_gives_sn_parameters_the_yacs_weight_decay():
    cfg = model_zoo.get_config(TINY)
    model = instantiate(cfg.model)
    cfg.optimizer.params.model = model
    cfg.optimizer.weight_decay = 1e-4
    optim = instantiate(cfg.optimizer)
    decay = {id(p): g["weight_decay"] for g in optim.param_groups for p in g["params"]}
    sn = _sn_layers(model)[0]
    for p in (sn.weight, sn.bias, sn.mean_weight, sn.var_weight):
        assert decay[id(p)] == 0.0
    conv = model.backbone.bottom_up.stem.conv1.weight
    assert decay[id(conv)] == 1e-4


def test_unknown_factory_name_is_one_sentence():
    with pytest.raises(ValueError, match="'XN' is not a norm registered with sn_det"):
        SNNorm("XN")


def test_unknown_names_under_any_norm_key_are_refused_and_known_ones_kept():
    from omegaconf import OmegaConf

    from sn_det.lazy import resolve_lazy_norms

    cfg = OmegaConf.create({"head": {"conv_norm": "GN", "fc_norm": "", "layers": [{"norm": "SN"}]}})
    assert resolve_lazy_norms(cfg) == ["head.layers[0].norm"]
    assert cfg.head.conv_norm == "GN" and cfg.head.fc_norm == ""
    cfg = OmegaConf.create({"head": {"conv_norm": "GNN", "num_norm": 3}})
    with pytest.raises(ValueError, match=r"^head.conv_norm = 'GNN' is not a known norm type"):
        resolve_lazy_norms(cfg)


def test_lazy_training_sets_are_checked_before_any_worker(tmp_path, monkeypatch):
    from sn_det.tools.lazyconfig_train_net import LazyConfigError, check_datasets, load_lazy_config

    config = os.path.join(REPO, "configs", "lazy", "mask_rcnn_R_50_FPN_2x_sn.py")
    cfg = load_lazy_config(config, ["train.init_checkpoint="])
    monkeypatch.setitem(cfg.dataloader.test.dataset, "names", "sn_synth_val")
    with pytest.raises(LazyConfigError, match="^dataloader.train names 'coco_2017_train', whose"):
        check_datasets(cfg, eval_only=False)
    check_datasets(cfg, eval_only=True)  # the test set alone is read


def test_lazyconfig_train_net_trains_and_evaluates(tmp_path):
    out = str(tmp_path / "run")
    proc = run_tool(
        LAZY_TRAIN_NET,
        "--config-file",
        model_zoo.get_config_file(TINY),
        f"train.output_dir={out}",
        "train.max_iter=2",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "copypaste: Task: segm" in log  # COCOEvaluator ran on boxes and masks
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    assert any(k.endswith("mean_weight") for k in state)


def test_lazyconfig_train_net_bad_config_is_one_sentence(tmp_path):
    proc = run_tool(LAZY_TRAIN_NET, "--config-file", "nope.py", cwd=None, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: cannot read the config file")
    assert "Traceback" not in proc.stderr


def test_frozen_stages_freeze_their_sn_layers_as_the_yacs_path_does():
    """freeze_at=2 (the R-50 recipe's): detectron2 freezes the parameters of the stem and
    res2 and turns only BatchNorm into FrozenBatchNorm; build_lazy_model also freezes their
    SN layers, which then never update their running statistics."""
    from sn_det.lazy import build_lazy_model, frozen_stage_count

    cfg = model_zoo.get_config(TINY)
    for freeze_at in (0, 2):
        cfg.model.backbone.bottom_up.freeze_at = freeze_at
        model = build_lazy_model(cfg.model)
        resnet = model.backbone.bottom_up
        assert frozen_stage_count(resnet) == freeze_at
        frozen = {
            name.split(".")[0]: m.frozen
            for name, m in resnet.named_modules()
            if isinstance(m, SwitchNorm2d)
        }
        assert frozen == {
            "stem": freeze_at >= 1,
            "res2": freeze_at >= 2,
            "res3": False,
            "res4": False,
            "res5": False,
        }
        model.train()
        stem_norm = resnet.stem.conv1.norm
        before = stem_norm.running_mean.clone()
        resnet(torch.randn(2, 3, 64, 64) * 3 + 1)
        assert torch.equal(stem_norm.running_mean, before) == (freeze_at >= 1)


def test_lazyconfig_train_net_refuses_a_checkpoint_of_another_model(tmp_path):
    """train.min_loaded_fraction (default 0.5) as MODEL.MIN_LOADED_FRACTION on the yacs path:
    a checkpoint filling almost nothing of the model is refused in one sentence."""
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    ckpt = str(tmp_path / "other.pth")
    torch.save(
        {"model": {f"backbone.bottom_up.{k}": v for k, v in other.state_dict().items()}}, ckpt
    )
    proc = run_tool(
        LAZY_TRAIN_NET,
        "--config-file",
        os.path.join(REPO, "configs", TINY),
        "--eval-only",
        f"train.init_checkpoint={ckpt}",
        f"train.output_dir={tmp_path / 'out'}",
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {ckpt} fills only") and "Traceback" not in proc.stderr
    assert "below train.min_loaded_fraction=0.5" in last
    assert "set train.min_loaded_fraction=0 to start from it anyway" in last


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.init_checkpoint=/nonexistent/w.pth", "train.init_checkpoint = '/nonexistent/"),
        ("train.min_loaded_fraction=abc", "must be a number from 0 to 1, got 'abc'"),
        ("train.min_loaded_fraction=1.5", "must be a number from 0 to 1, got 1.5"),
    ],
)
def test_lazyconfig_train_net_bad_train_settings_are_refused_up_front(tmp_path, override, message):
    """Refused before any worker starts (fvcore would assert on a missing checkpoint, and a
    text fraction would fail deep in the checkpointer): by the checks invoke_main runs before
    launching, called here in this process (a command start costs ~8 s on these CPUs; the
    command's one-sentence exit for these errors is checked by the tests around)."""
    from sn_det.tools.lazyconfig_train_net import (
        LazyConfigError,
        check_train_settings,
        load_lazy_config,
    )

    cfg = load_lazy_config(
        os.path.join(REPO, "configs", TINY), [override, f"train.output_dir={tmp_path}"]
    )
    with pytest.raises(LazyConfigError) as e:
        check_train_settings(cfg, resume=False)
    assert message in str(e.value)


def test_lazyconfig_train_net_bad_train_setting_is_one_sentence(tmp_path):
    # The command itself, once: invoke_main runs the checks above before launching.
    proc = run_tool(
        LAZY_TRAIN_NET,
        "--config-file", os.path.join(REPO, "configs", TINY), "--eval-only",
        "train.init_checkpoint=/nonexistent/w.pth", f"train.output_dir={tmp_path}",
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.init_checkpoint = '/nonexistent/" in last, last
    assert "Traceback" not in proc.stderr


def test_lazyconfig_bad_norm_is_refused_when_the_config_is_read():
    from sn_det.tools.lazyconfig_train_net import LazyConfigError, load_lazy_config

    with pytest.raises(LazyConfigError, match="model.backbone.norm = 'SNN' is not a known"):
        load_lazy_config(os.path.join(REPO, "configs", TINY), ["model.backbone.norm=SNN"])


@pytest.mark.parametrize(
    "config,overrides,flags,message",
    [
        (  # evaluation reads the test set alone
            "lazy/mask_rcnn_R_50_FPN_2x_sn.py",
            ["train.init_checkpoint="],
            ["--eval-only"],
            "dataloader.test names 'coco_2017_val', whose json_file",
        ),
    ],
)
def test_lazyconfig_train_net_bad_datasets_are_one_sentence(
    tmp_path, config, overrides, flags, message
):
    proc = run_tool(
        LAZY_TRAIN_NET,
        "--config-file", os.path.join(REPO, "configs", config), *flags, *overrides,
        f"train.output_dir={tmp_path}", "train.device=cpu",
        env={"DETECTRON2_DATASETS": str(tmp_path / "datasets")},
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    assert "Traceback" not in proc.stderr
