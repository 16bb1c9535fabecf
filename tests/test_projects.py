"""sn_det.projects: which project a config belongs to, and its trainer and config keys, as
the tools (train_net, eval_continuous, visualize_sn) look them up."""

import os

import pytest

from sn_det.engine import Trainer
from sn_det.projects import CONFIG_ADDERS, config_adders, project_of, project_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_project_of_a_config_is_its_projects_folder():
    assert project_of(os.path.join(REPO, "projects/SparseSN/configs/a.yaml")) == "SparseSN"
    # an installed package keeps the layout under sn_det/model_zoo/projects/
    installed = "/venv/lib/site-packages/sn_det/model_zoo/projects/SNPointRend/configs/b.yaml"
    assert project_of(installed) == "SNPointRend"
    assert project_of(os.path.join(REPO, "configs/quick_schedules/x.yaml")) is None
    assert project_of(os.path.join(REPO, "projects/NormStudy/configs/y.yaml")) is None  # no keys
    assert project_of("output/run/config.yaml") is None


def test_each_project_has_its_trainer_and_config_keys():
    from sn_det.config import get_sn_cfg

    assert project_trainer("SparseSN").__name__ == "SSNTrainer"
    assert project_trainer("SNSegmentation").__name__ == "SNSegTrainer"
    assert project_trainer("SNPointRend") is Trainer and project_trainer(None) is Trainer
    assert all(issubclass(project_trainer(p), Trainer) for p in CONFIG_ADDERS)
    assert config_adders(None) == ()
    keys = {
        "SparseSN": "SSN",
        "SNSegmentation": "SEM_SEG_HEAD.ASPP_CHANNELS",
        "SNPointRend": "POINT_HEAD",
    }
    for project, key in keys.items():
        cfg = get_sn_cfg(config_adders(project))
        node = cfg.MODEL
        for part in key.split("."):
            node = node[part]  # raises KeyError when the project's keys are missing


def test_an_unknown_project_is_one_sentence():
    with pytest.raises(ValueError, match="unknown project 'SSN'; projects with config keys: "):
        project_trainer("SSN")
