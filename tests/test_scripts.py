"""scripts/*.sh: executable, documented, and wired to the tools and recipes they name.
(scripts/eval_continuous.sh runs in test_eval_continuous.py, setup_env.sh in
test_setup_env.py.)"""

import os
import re
import subprocess
import sys

import pytest

from tool_runner import INSTANT, REPO, one_step

SCRIPTS = os.path.join(REPO, "scripts")
WORKFLOW = [
    "train_scratch.sh",
    "train_finetune.sh",
    "eval_once.sh",
    "eval_continuous.sh",
    "convert.sh",
]


def run(script, *args, env=None, cwd=None):
    return subprocess.run(
        ["bash", os.path.join(SCRIPTS, script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd or REPO,
        # The scripts run ${PYTHON:-python}: this interpreter (the .venv's under make test).
        env={**os.environ, "PYTHON": sys.executable, **(env or {})},
    )


@pytest.mark.parametrize("script", WORKFLOW)
def test_executable_with_usage_and_valid_syntax(script):
    path = os.path.join(SCRIPTS, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    with open(path) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "Usage:" in text
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    for config in re.findall(r"configs/[\w/.-]+\.yaml", text):
        assert os.path.exists(os.path.join(REPO, config)), f"{script} names a missing {config}"


@pytest.mark.parametrize("script", ["eval_once.sh", "eval_continuous.sh", "convert.sh"])
def test_missing_arguments_print_usage_and_exit_2(script):
    proc = run(script)
    assert proc.returncode == 2
    assert "usage" in proc.stderr.lower()


def test_convert_refuses_a_source_that_is_not_a_folder(tmp_path):
    proc = run("convert.sh", str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"error: {tmp_path / 'nowhere'} is not a folder (give the folder that holds the "
        "downloaded .pth files)"
    )


def test_train_scratch_then_eval_once_from_another_folder(tmp_path):
    out = tmp_path / "run"
    # Relative paths are the caller's: run from tmp_path with a relative OUTPUT_DIR.
    proc = run(
        "train_scratch.sh", INSTANT, *one_step("run"), env={"NUM_GPUS": "1"}, cwd=str(tmp_path)
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "model_final.pth").exists()
    proc = run(
        "eval_once.sh",
        INSTANT,
        "run/model_final.pth",
        "OUTPUT_DIR",
        "eval",
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "copypaste: Task: segm" in proc.stdout + proc.stderr
    assert (tmp_path / "eval" / "inference" / "sn_synth_val").is_dir()


def test_train_finetune_uses_the_recipe_and_its_weights():
    # The default recipe asks for a GPU, which this machine may not have.
    proc = run("train_finetune.sh", env={"NUM_GPUS": "1"})
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    # On the CPU: it fine-tunes from a converted ImageNet model, which is not here.
    recipe = os.path.join("configs", "sn_baselines", "mask_rcnn_R_50_FPN_2x_sn_8x1.yaml")
    proc = run("train_finetune.sh", recipe, "MODEL.DEVICE", "cpu", env={"NUM_GPUS": "1"})
    assert proc.returncode == 2
    assert "MODEL.WEIGHTS = 'pretrained/resnet50_sn_8x1.pth' does not exist" in proc.stderr


def test_convert_recognises_the_authors_download_names(tmp_path):
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from published_models import detectron_pytorch_layout, published_resnet50

    src = tmp_path / "downloads"
    src.mkdir()
    torch.save(published_resnet50(True), str(src / "ResNet50v1+SN(8,32)-77.49.pth"))
    # An (8,1) backbone in the authors' Detectron.pytorch form, under their convert.sh name.
    det = detectron_pytorch_layout(published_resnet50(False, seed=1), use_fpn=True)
    torch.save(det, str(src / "resnet-sn-50-(8,1).pth"))
    (src / "notes.pth").write_bytes(b"not a model name")  # ignored: the name says nothing
    proc = run("convert.sh", str(src), "pretrained", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "pretrained")) == [
        "resnet50_sn_8x1.pth",
        "resnet50_sn_8x32.pth",
    ]
    assert "use it with MODEL.SN.USING_BN False" in proc.stdout
    assert "Conv_Body.conv_body.res1.sn1.weight -> stem.conv1.norm.weight" in proc.stdout


@pytest.mark.parametrize("script", ["gpu_carry.sh", "gpu_checks.sh"])
def test_gpu_scripts_are_executable_and_name_existing_files(script):
    path = os.path.join(SCRIPTS, script)
    assert os.access(path, os.X_OK), f"{script} is not executable"
    with open(path) as f:
        text = f.read()
    assert text.startswith("#!/usr/bin/env bash\n") and "Usage" in text
    assert subprocess.run(["bash", "-n", path]).returncode == 0
    named = re.findall(r"(?:tests|tools|projects|benchmarks)/[\w/.-]+\.(?:py|yaml)", text)
    assert named or script == "gpu_carry.sh"
    for rel in named:
        assert os.path.exists(os.path.join(REPO, rel)), f"{script} names a missing {rel}"
    deselected = re.findall(r"--deselect (tests/[\w/.-]+\.py)::(\w+)", text)
    # gpu_checks.sh leaves out the test that the CPU kernels are built (not on the GPU machine)
    assert deselected or script != "gpu_checks.sh", "gpu_checks.sh deselects nothing"
    for rel, name in deselected:
        with open(os.path.join(REPO, rel)) as f:
            assert f"def {name}(" in f.read(), f"{script} deselects a missing test {name}"


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the refusal without a GPU"
)
def test_gpu_checks_without_a_gpu_say_so_and_test_nothing(tmp_path):
    proc = run("gpu_checks.sh", env={"OUT": str(tmp_path)})
    assert proc.returncode == 99, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == (
        f"[gpu-checks] error: no CUDA GPU visible to {sys.executable}; nothing here would test "
        "the GPU"
    )
    assert sorted(os.listdir(tmp_path)) == ["env.txt"]


def test_gpu_checks_fit_their_steps_into_the_total_time(tmp_path):
    """The step logic, with a stand-in Python that claims a GPU and spends 2 s per step: each
    step's limit is cut to what is left of GPU_CHECK_TOTAL, and steps that would get under
    30 s are skipped (and counted), so one device call never runs past its end."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        'case "$*" in\n'
        '  -) cat >/dev/null; echo "fake python";;\n'
        "  *is_available*) exit 0;;\n"
        '  *"import xdist"*) exit 1;;\n'
        '  *) echo "ran: $*"; sleep 2;;\n'
        "esac\n"
    )
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {"OUT": str(out), "PYTHON": str(fake), "GPU_CHECK_TOTAL": "31"}
    proc = run("gpu_checks.sh", env=env)
    log = proc.stdout
    assert re.search(r"\[gpu-checks\] tests \(limit (31|30)s\) at [01]s", log), log
    for name in ("bench", "host", "seg", "study", "compiled"):
        assert f"[gpu-checks] {name}: skipped, " in log, log
    assert proc.returncode == 5, log  # the five skipped steps
    assert "ran: -m pytest" in (out / "tests.log").read_text()
    env.update(GPU_CHECK_TOTAL="600", GPU_CHECK_STEPS="compiled")
    proc = run("gpu_checks.sh", env=env)
    assert proc.returncode == 0 and "[gpu-checks] compiled (limit 240s)" in proc.stdout
    assert "--device cuda --compiled --skip-model" in (out / "compiled.log").read_text()


def test_programs_the_readmes_run_directly_are_executable():
    # A command line in a README that starts with a program's path (not "python path") is run
    # by the shell, which refuses a file without its executable bit ("Permission denied").
    readmes = [os.path.join(REPO, "README.md")]
    projects = os.path.join(REPO, "projects")
    readmes += [os.path.join(projects, p, "README.md") for p in sorted(os.listdir(projects))]
    run_directly = set()
    for readme in filter(os.path.exists, readmes):
        with open(readme) as f:
            for block in re.findall(r"```bash\n(.*?)```", f.read(), flags=re.S):
                for line in block.splitlines():
                    m = re.match(r"\s*(?:[A-Z_]+=\S+\s+)*((?:tools|projects|scripts)/\S+)", line)
                    if m:
                        run_directly.add(m.group(1))
    assert len(run_directly) >= 5, run_directly  # the READMEs do show such commands
    for rel in sorted(run_directly):
        path = os.path.join(REPO, rel)
        assert os.path.isfile(path), f"a README runs {rel}, which does not exist"
        assert os.access(path, os.X_OK), f"a README runs {rel} directly, but it is not executable"
        with open(path) as f:
            assert f.readline().startswith("#!"), f"{rel} has no #! line"
