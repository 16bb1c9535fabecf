"""The package as a user installs it: shipped configs (sn_det.model_zoo), detectron2 as a
prerequisite, and a wheel that holds every recipe."""

import glob
import os
import subprocess
import sys
import zipfile

import pytest

from sn_det import model_zoo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_config_in_the_repository_is_shipped_and_loads():
    from detectron2.projects.point_rend import add_pointrend_config

    from sn_det.projects.sn_segmentation import add_deeplab_config
    from sn_det.projects.sparse_sn import add_sparse_sn_config

    in_repo = sorted(
        [
            os.path.relpath(p, os.path.join(REPO, "configs"))
            for ext in ("yaml", "py")
            for p in glob.glob(os.path.join(REPO, "configs", "**", f"*.{ext}"), recursive=True)
        ]
        + [
            os.path.relpath(p, REPO)
            for p in glob.glob(
                os.path.join(REPO, "projects", "*", "configs", "**", "*.yaml"), recursive=True
            )
        ]
    )
    assert model_zoo.list_configs() == in_repo
    adders = {
        "projects/SparseSN/": (add_sparse_sn_config,),
        "projects/SNSegmentation/": (add_deeplab_config,),
        "projects/SNPointRend/": (add_pointrend_config,),
    }
    for path in in_repo:
        extra = next((a for prefix, a in adders.items() if path.startswith(prefix)), ())
        cfg = model_zoo.get_config(path, extra)  # _BASE_ chains resolve from the shipped folder
        if path.endswith(".py"):  # LazyConfig: SN names resolved into factories
            assert "model" in cfg and "optimizer" in cfg, path
        else:
            assert cfg.MODEL.SN.MOMENTUM > 0, path


def test_a_config_the_zoo_does_not_have_is_one_sentence():
    with pytest.raises(model_zoo.ConfigNotFoundError, match="sn_det ships no config 'nope.yaml'"):
        model_zoo.get_config_file("nope.yaml")


def test_import_without_detectron2_says_what_to_install():
    code = "import sys; sys.modules['detectron2'] = None; import sn_det"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: sn_det needs detectron2, which is not installed")
    assert "detectron2.readthedocs.io" in last


def test_isolated_wheel_builds_without_torch_and_ships_the_configs(tmp_path):
    """`pip wheel .` in an isolated build environment (no torch there): a pure-Python wheel
    with every yaml, and no stale compiled kernels from the source tree."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = glob.glob(str(tmp_path / "sn_det-*.whl"))
    assert wheel.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    zoo = ("sn_det/model_zoo/configs/", "sn_det/model_zoo/projects/")
    yamls = [n for n in names if n.startswith(zoo) and n.endswith((".yaml", ".py"))]
    assert len(yamls) == len(model_zoo.list_configs())
    assert "sn_det/projects/sparse_sn/sparsestmax.py" in names  # projects ship as subpackages
    assert not [n for n in names if n.endswith(".so")]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [l for l in meta.splitlines() if l.startswith("Requires-Dist") and "extra" not in l]
    assert not [r for r in requires if "==" in r or "detectron2" in r], requires


def test_a_base_in_detectron2s_model_zoo(tmp_path):
    from sn_det.config import get_sn_cfg

    child = tmp_path / "child.yaml"
    child.write_text(
        '_BASE_: "d2zoo://COCO-Detection/retinanet_R_50_FPN_1x.yaml"\nMODEL:\n  RETINANET:\n    NUM_CLASSES: 3\n'
    )
    cfg = get_sn_cfg()
    cfg.merge_from_file(str(child))
    assert cfg.MODEL.META_ARCHITECTURE == "RetinaNet" and cfg.MODEL.RETINANET.NUM_CLASSES == 3
    child.write_text('_BASE_: "d2zoo://COCO-Detection/nope.yaml"\n')
    with pytest.raises(FileNotFoundError, match="detectron2's model zoo has no such config"):
        get_sn_cfg().merge_from_file(str(child))
