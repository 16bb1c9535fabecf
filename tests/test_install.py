"""sn_det as a user installs it, outside the checkout: a wheel installed with --no-deps into a
fresh virtual environment that sees this environment's packages (torch, detectron2), then,
from a temporary directory, a shipped config through sn_det.model_zoo and two iterations of
training plus evaluation through the installed command."""

import glob
import json
import os
import subprocess
import sys
import sysconfig
import venv

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of the fresh venv, a work folder outside the checkout)."""
    root = tmp_path_factory.mktemp("install")
    wheel_dir = root / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", REPO, "--no-deps", "-q", "-w", str(wheel_dir)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = glob.glob(str(wheel_dir / "sn_det-*.whl"))
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # This environment's packages, as a plain path: its own .pth files (the editable install
    # of the checkout among them) are not processed from there.
    with open(os.path.join(site, "outer_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    work = root / "work"
    work.mkdir()
    return python, str(work)


def _run(installed, *args, timeout=300):
    python, work = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [python, *args], capture_output=True, text=True, timeout=timeout, cwd=work, env=env
    )


def _shipped(installed, config_path):
    """The installed path of a shipped config, as the installed package gives it."""
    code = f"from sn_det import model_zoo; print(model_zoo.get_config_file({config_path!r}))"
    return _run(installed, "-c", code).stdout.strip()


def _train(installed, config, *opts):
    """Two iterations of the installed train_net on ``config``."""
    return _run(
        installed,
        "-m",
        "sn_det.tools.train_net",
        "--config-file",
        config,
        "SOLVER.MAX_ITER",
        "2",
        *opts,
    )


def test_the_installed_package_is_used_and_ships_its_configs(installed):
    proc = _run(
        installed,
        "-c",
        "import sn_det, sn_det.model_zoo as z; print(sn_det.__file__); "
        "print(z.get_config_file('quick_schedules/mask_rcnn_sn_instant_test.yaml')); "
        "print(z.get_config('sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml').MODEL.SN.USING_BN); "
        "print(z.get_config('sn_baselines/cascade_mask_rcnn_R_50_FPN_1x_sn.yaml').MODEL.ROI_HEADS.NAME)",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    module, config, using_bn, cascade = proc.stdout.split()[-4:]
    assert cascade == "CascadeROIHeads"  # its _BASE_ is in detectron2's own model zoo
    assert not module.startswith(REPO) and not config.startswith(REPO), (module, config)
    assert using_bn == "False"  # the (8,1) recipe, read through its _BASE_ chain


def test_the_installed_command_trains_and_evaluates(installed):
    python, work = installed
    config = _shipped(installed, "quick_schedules/mask_rcnn_sn_instant_test.yaml")
    proc = _train(installed, config, "OUTPUT_DIR", "out")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(os.path.join(work, "out", "metrics.json")) as f:
        final = [json.loads(line) for line in f][-1]
    assert "bbox/AP" in final and "segm/AP" in final  # COCOEvaluator ran on sn_synth_val


def test_bad_input_to_the_installed_commands_is_one_sentence(installed):
    proc = _run(installed, "-m", "sn_det.tools.train_net", "--config-file", "nope.yaml")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot read the config file")
    proc = _run(installed, "-c", "import sn_det.model_zoo as z; z.get_config_file('nope.yaml')")
    assert "sn_det ships no config 'nope.yaml'" in proc.stderr.strip().splitlines()[-1]


def test_the_installed_command_trains_a_project_recipe_with_its_trainer(installed):
    """A shipped Sparse SN recipe through the installed train_net: the project (trainer with
    the radius hook, config keys) follows from the recipe's folder."""
    python, work = installed
    config = _shipped(
        installed, "projects/SparseSN/configs/quick_schedules/mask_rcnn_ssn_instant_test.yaml"
    )
    assert not config.startswith(REPO), config
    proc = _train(installed, config, "DATASETS.TEST", "()", "OUTPUT_DIR", "ssn_out")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Project SparseSN: SSNTrainer" in proc.stdout
    with open(os.path.join(work, "ssn_out", "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    assert any("ssn/radius_fraction" in r for r in logged)  # the project's hook ran
