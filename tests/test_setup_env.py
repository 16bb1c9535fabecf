"""scripts/setup_env.sh refuses clearly when it cannot find the Python it needs."""

import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wrong_python_is_one_sentence_and_nothing_is_created(tmp_path):
    # A copy of what the script reads, without a .venv, so the script must look for Python.
    os.makedirs(tmp_path / "scripts")
    shutil.copy(os.path.join(REPO, "scripts", "setup_env.sh"), tmp_path / "scripts")
    for name in ("constraints.txt", "setup.py"):
        shutil.copy(os.path.join(REPO, name), tmp_path)
    shutil.copytree(
        os.path.join(REPO, "sn_det", "layers", "csrc"), tmp_path / "sn_det" / "layers" / "csrc"
    )
    proc = subprocess.run(
        ["bash", str(tmp_path / "scripts" / "setup_env.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SN_DET_PYTHON": "/usr/bin/false"},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "error: SN_DET_PYTHON=/usr/bin/false is not a Python 3.10 with venv (the detectron2 wheel is cp310)."
    )
    assert not (tmp_path / ".venv").exists()
