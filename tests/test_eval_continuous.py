"""tools/eval_continuous.py against a real training run's checkpoints, fed to it one by one
the way a running training writes them (the file first, then detectron2's last_checkpoint)."""

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "eval_continuous.py")
SCRIPT = os.path.join(REPO, "scripts", "eval_continuous.sh")
INSTANT = os.path.join(REPO, "configs", "quick_schedules", "mask_rcnn_sn_instant_test.yaml")
CHECKPOINTS = ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]


def json_lines(folder):
    path = os.path.join(folder, "continuous_eval.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def wait_for(condition, proc, timeout=180, what=""):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"eval_continuous exited early ({what}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class _LogReader:
    """``.read()`` of a log file, standing in for a process's stdout pipe."""

    def __init__(self, path):
        self.path = path

    def read(self):
        with open(self.path) as f:
            return f.read()


def publish(src, dst, name):
    """What detectron2's Checkpointer does: write the file, then tag it as the last one."""
    shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    with open(os.path.join(dst, "last_checkpoint"), "w") as f:
        f.write(name)


def test_each_checkpoint_once_in_order_never_early_and_not_again_after_restart(
    instant_run, tmp_path
):
    src, _ = instant_run
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    publish(src, run_dir, CHECKPOINTS[0])
    # Output to a file, not a pipe: nobody reads a pipe while the tool runs, and once its
    # buffer is full (evaluation tables, warnings of newer libraries) the tool blocks.
    log_path = str(tmp_path / "tool.log")
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, TOOL, "--config-file", INSTANT, "--load-dir", run_dir, "--poll", "0.3"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    proc.stdout = _LogReader(log_path)
    try:
        wait_for(lambda: len(json_lines(run_dir)) == 1, proc, what="the first checkpoint")

        # A checkpoint being written: half its bytes are there, last_checkpoint not updated.
        with open(os.path.join(src, CHECKPOINTS[1]), "rb") as f:
            data = f.read()
        with open(os.path.join(run_dir, CHECKPOINTS[1]), "wb") as f:
            f.write(data[: len(data) // 2])
        time.sleep(3)  # 10 polls
        assert proc.poll() is None, proc.stdout.read()
        assert len(json_lines(run_dir)) == 1, "a half-written checkpoint was evaluated"

        publish(src, run_dir, CHECKPOINTS[1])  # written while the tool runs
        wait_for(lambda: len(json_lines(run_dir)) == 2, proc, what="the second checkpoint")
        publish(src, run_dir, CHECKPOINTS[2])
        proc.wait(timeout=180)  # stops by itself after model_final
    finally:
        if proc.poll() is None:
            proc.kill()
        log_file.close()
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    assert "waiting for a new checkpoint" in out

    lines = json_lines(run_dir)
    assert [line["checkpoint"] for line in lines] == CHECKPOINTS
    assert [line["iteration"] for line in lines] == [1, 3, 3]
    for line in lines:
        assert {"bbox/AP", "segm/AP"} <= set(line["metrics"]), line
    # The final model is the iteration-3 model: the same weights give the same metrics.
    assert lines[1]["metrics"] == lines[2]["metrics"]

    # TensorBoard: every metric at the checkpoint's iteration.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(run_dir, "continuous_eval"))
    events.Reload()
    ap = events.Scalars("bbox/AP")
    assert [e.step for e in ap] == [1, 3, 3]
    assert [round(e.value, 4) for e in ap] == [
        round(line["metrics"]["bbox/AP"], 4) for line in lines
    ]

    # A restart (through the script) evaluates nothing again and stops at once.
    restart = subprocess.run(
        ["bash", SCRIPT, INSTANT, run_dir, "60"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=str(tmp_path),
        env={**os.environ, "PYTHON": sys.executable},  # the scripts run ${PYTHON:-python}
    )
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "evaluating" not in restart.stdout
    assert "already evaluated" in restart.stdout
    assert len(json_lines(run_dir)) == 3


def test_timeout_without_new_checkpoints(tmp_path):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, TOOL, "--config-file", INSTANT, "--load-dir", str(tmp_path)]
        + ["--timeout", "1", "--poll", "0.2"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no new checkpoint" in proc.stdout and "stopping with 0 evaluated" in proc.stdout
    assert time.monotonic() - started < 60
    assert json_lines(str(tmp_path)) == []


def test_a_cut_off_last_line_is_evaluated_again(tmp_path):
    from sn_det.tools import eval_continuous as tool

    path = tmp_path / "continuous_eval.jsonl"
    path.write_text('{"checkpoint": "model_0000001.pth", "iteration": 1, "metrics": {}}\n{"chec')
    assert tool.read_done(str(path)) == {"model_0000001.pth"}
    assert path.read_text().endswith("}\n")


def test_missing_folder_is_one_sentence_and_exit_2(tmp_path, capsys):
    # main() in this process: a command start costs ~8 s on these CPUs, and the tests above
    # run the command itself.
    from sn_det.tools.eval_continuous import main

    assert main(["--config-file", INSTANT, "--load-dir", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --load-dir {tmp_path / 'nope'} is not a folder"
    ]


def test_a_corrupt_checkpoint_is_recorded_as_failed_and_not_retried(instant_run, tmp_path):
    """A truncated checkpoint among finished ones: recorded with the reason, the next one
    evaluated; a restart neither stops on it nor tries it again (what a restart skips is
    what read_done returns, as the restart in the test above shows)."""
    src, _ = instant_run
    run_dir = str(tmp_path / "run")
    os.makedirs(run_dir)
    with open(os.path.join(src, CHECKPOINTS[0]), "rb") as f:
        data = f.read()
    with open(os.path.join(run_dir, CHECKPOINTS[0]), "wb") as f:
        f.write(data[: len(data) // 3])
    publish(src, run_dir, CHECKPOINTS[2])  # model_final, tagged: the cut one is "finished"
    command = [sys.executable, TOOL, "--config-file", INSTANT, "--load-dir", run_dir]
    command += ["--poll", "0.2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"{CHECKPOINTS[0]} failed (recorded, not retried)" in first.stdout
    lines = json_lines(run_dir)
    assert [line["checkpoint"] for line in lines] == [CHECKPOINTS[0], CHECKPOINTS[2]]
    assert lines[0]["iteration"] is None and "metrics" not in lines[0]
    assert CHECKPOINTS[0] in lines[0]["failed"], lines[0]  # the loader's sentence, naming it
    assert lines[1]["iteration"] == 3 and "bbox/AP" in lines[1]["metrics"]

    # A restart reads both as done: it neither stops on the cut one nor evaluates it again.
    from sn_det.tools import eval_continuous as tool

    assert tool.read_done(os.path.join(run_dir, "continuous_eval.jsonl")) == {
        CHECKPOINTS[0],
        CHECKPOINTS[2],
    }


def test_a_project_config_is_evaluated_by_the_projects_trainer(monkeypatch, tmp_path):
    """A SNSegmentation config (found from its folder, or named with --project) is evaluated
    by SNSegTrainer, whose test adds the multi-scale pass, not by sn_det's Trainer."""
    import pytest

    from sn_det.tools import eval_continuous

    class Stop(Exception):
        pass

    seen = []

    def record(cfg, load_dir, trainer_cls):
        seen.append(trainer_cls.__name__)
        raise Stop

    monkeypatch.setattr(eval_continuous, "ContinuousEvaluator", record)
    config = os.path.join(
        REPO, "projects/SNSegmentation/configs/quick_schedules/deeplab_v3_R_50_sn_instant_test.yaml"
    )
    for extra in ([], ["--project", "SNSegmentation"]):
        args = eval_continuous.parse_args(
            ["--config-file", config, "--load-dir", str(tmp_path), *extra]
        )
        with pytest.raises(Stop):
            eval_continuous.run(args)
    assert seen == ["SNSegTrainer", "SNSegTrainer"]
