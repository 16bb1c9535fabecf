"""projects/NormStudy: the batch-size study as one resumable command.

The end-to-end test runs a tiny study (2 norms x 2 images-per-process settings, a few
iterations on 64-pixel images) through the real command, then resumes it twice (its main()
in the test's process): once finished (nothing reruns) and once with a run made unfinished
(only that one reruns)."""

import csv
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest

from sn_det.projects.norm_study import NORMS, SIZES, RunFailed, plan_runs, schedule
from sn_det.projects.norm_study import cli
from sn_det.projects.norm_study.report import cell_stats

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(REPO, "projects", "NormStudy", "study.py")


def _study(*args):
    return subprocess.run(
        [sys.executable, STUDY, *args], capture_output=True, text=True, timeout=900
    )


def test_schedule_scales_lr_and_keeps_the_images_seen():
    # The demo's recipe: lr 0.03 at 4 images, 700 iterations, warm-up 100, steps 550 and 650.
    assert schedule(2800, 4) == {"lr": 0.03, "iterations": 700, "warmup": 100, "steps": [550, 650]}
    s = schedule(800, 16)  # SyncSN at 8 images per process: 2 x 8 images per iteration
    assert s["iterations"] == 50 and s["iterations"] * 16 == 800
    assert math.isclose(s["lr"], 0.03 / 4 * 16)
    assert s["warmup"] == round(50 * 100 / 700) and s["steps"] == [39, 46]
    assert schedule(8, 16)["iterations"] == 1  # never zero iterations


def test_plan_covers_the_grid_then_the_spread_column():
    size = SIZES["default"]
    runs = plan_runs(list(NORMS), [1, 2, 4, 8], size, [0], [1, 2], 800)
    assert len(runs) == 6 * 4 + 6 * 2
    assert [r.seed for r in runs[:24]] == [0] * 24  # the whole grid first
    assert {(r.ims_per_process, r.seed) for r in runs[24:]} == {(2, 1), (2, 2)}
    sync = next(r for r in runs if r.norm.name == "SyncSN" and r.ims_per_process == 4)
    assert sync.total_batch == 8 and sync.norm.processes == 2
    opts = dict(zip(sync.opts("cpu", "out")[::2], sync.opts("cpu", "out")[1::2]))
    assert opts["SOLVER.IMS_PER_BATCH"] == "8" and opts["SOLVER.MAX_ITER"] == "100"
    assert opts["MODEL.RESNETS.NORM"] == opts["MODEL.FPN.NORM"] == "SyncSN"
    assert runs[0].norm.name == "SyncSN"  # needs every job slot: first, not between pairs
    frozen = next(r for r in runs if r.norm.name == "FrozenBN")
    frozen = dict(zip(*[iter(frozen.opts("cpu", "out"))] * 2))
    assert (frozen["MODEL.RESNETS.NORM"], frozen["MODEL.FPN.NORM"]) == ("FrozenBN", "")


def test_cell_stats_is_the_sample_spread():
    mean, sd, n = cell_stats([30.0, 32.0, 37.0])
    assert (mean, n) == (33.0, 3)
    assert math.isclose(sd, math.sqrt(((30 - 33) ** 2 + (32 - 33) ** 2 + (37 - 33) ** 2) / 2))
    assert math.isnan(cell_stats([5.0])[1])


@pytest.mark.parametrize(
    "argv, sentence",
    [
        (["--norms", "BN,XN"], "unknown norm 'XN'"),
        (["--ims-per-process", "0,2"], "--ims-per-process needs positive integers"),
        (["--ims-per-process", "two"], "expected comma-separated integers"),
        (["--images", "0"], "--images must be a positive number"),
        (["--size", "huge"], "invalid choice: 'huge'"),
    ],
)
def test_bad_arguments_are_one_sentence(argv, sentence, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and sentence in err[0], err


def test_an_output_that_is_a_file_or_another_study_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        cli.main(["--output", str(tmp_path / "file")])
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "study.json").write_text(
        json.dumps({"size": "default", "images": 800, "device": "cpu"})
    )
    with pytest.raises(SystemExit):
        cli.main(["--output", str(tmp_path / "study"), "--images", "400"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a study with other settings" in err[0]


def _fake_result(run):
    return {"run": run.name, "norm": run.norm.name, "ims_per_process": run.ims_per_process,
            "processes": run.norm.processes, "total_batch": run.total_batch, "seed": run.seed,
            "images": run.images, "iterations": 1, "lr": 0.1, "status": "ok",
            "diverged_at": None, "box_ap": 10.0, "mask_ap": 9.0, "wall_s": 1.0, "cpu_s": 1.0,
            "importance": None}  # fmt: skip


def test_a_failed_run_is_reported_and_the_study_goes_on(tmp_path, monkeypatch, capsys):
    """The control flow around runs, with a stand-in for the training command."""
    attempted = []

    def fake_execute(run, device, run_dir, keep, threads):
        attempted.append(run.name)
        if run.name == "GN_ipp1_seed0":
            raise RunFailed("the training command exited with status 1", "some/stdout.log")
        return _fake_result(run)

    monkeypatch.setattr(cli, "execute", fake_execute)
    out = tmp_path / "study"
    code = cli.main(["--norms", "GN,BN", "--ims-per-process", "1,2", "--output", str(out),
                     "--spread-seeds", "", "--jobs", "1"])  # fmt: skip
    assert code == 1
    assert attempted == ["GN_ipp1_seed0", "BN_ipp1_seed0", "GN_ipp2_seed0", "BN_ipp2_seed0"]
    captured = capsys.readouterr()
    assert "GN_ipp1_seed0: the training command exited with status 1; log: some/stdout.log" in (
        captured.err
    )
    assert "[run 4/4]" in captured.out and "estimated remaining" in captured.out
    with open(out / "results.csv") as f:
        assert [r["run"] for r in csv.DictReader(f)] == [n for n in attempted[1:]]


def test_concurrent_runs_share_the_cores_and_syncsn_runs_alone(tmp_path, monkeypatch):
    lock = threading.Lock()
    active, overlaps, threads_seen = [], [], {}

    def fake_execute(run, device, run_dir, keep, threads):
        with lock:
            active.append(run.name)
            overlaps.append(tuple(active))
            threads_seen[run.name] = threads
        time.sleep(0.2)
        with lock:
            active.remove(run.name)
        return _fake_result(run)

    monkeypatch.setattr(cli, "execute", fake_execute)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    code = cli.main(["--norms", "BN,GN,SyncSN", "--ims-per-process", "1,2", "--jobs", "2",
                     "--spread-seeds", "", "--output", str(tmp_path / "study")])  # fmt: skip
    assert code == 0
    assert max(len(o) for o in overlaps) == 2  # two single-process runs at a time
    assert all(len(o) == 1 for o in overlaps if any(n.startswith("SyncSN") for n in o))
    assert set(threads_seen.values()) == {1}  # 2 cores: one thread per training process


def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    out = str(tmp_path / "study")
    args = ["--size", "tiny", "--norms", "BN,SN", "--ims-per-process", "1,2", "--output", out]
    proc = _study(*args)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "[run 4/4] SN_ipp2_seed0" in proc.stdout and "estimated remaining" in proc.stdout

    names = ["BN_ipp1_seed0", "SN_ipp1_seed0", "BN_ipp2_seed0", "SN_ipp2_seed0"]
    results = {}
    for name in names:
        with open(os.path.join(out, "runs", name, "result.json")) as f:
            results[name] = json.load(f)
    for name, r in results.items():
        # The schedule of 8 images: lr 0.03/4 per image, 8 / batch iterations.
        assert r["status"] == "ok" and r["images"] == 8
        assert r["iterations"] == 8 // r["total_batch"]
        assert math.isclose(r["lr"], 0.0075 * r["total_batch"])
        assert 0.0 <= r["box_ap"] <= 100.0 and 0.0 <= r["mask_ap"] <= 100.0, r
        # COCOEvaluator ran on the 60 validation images, in the run's own folder.
        assert os.path.isfile(
            os.path.join(
                out, "runs", name, "inference", "sn_synth_val", "coco_instances_results.json"
            )
        )
        assert not os.path.exists(os.path.join(out, "runs", name, "model_final.pth"))
    for name in ("SN_ipp1_seed0", "SN_ipp2_seed0"):  # switch weights: 3 shares summing to 1
        layers = results[name]["importance"]
        assert len(layers) > 20
        for layer in layers:
            assert math.isclose(sum(layer["mean"]), 1.0, abs_tol=1e-6)
            assert math.isclose(sum(layer["var"]), 1.0, abs_tol=1e-6)
    assert results["BN_ipp1_seed0"]["importance"] is None

    with open(os.path.join(out, "results.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["run"] for r in rows] == names
    for row in rows:
        assert float(row["box_ap"]) == pytest.approx(results[row["run"]]["box_ap"])
    with open(os.path.join(out, "results.md")) as f:
        table = f.read()
    assert "| BN | " in table and "| SN | " in table and "No cell has more than one seed" in table
    for picture in ("ap_vs_ims_per_process.png", "importance_SN_ipp1_seed0.png",
                    "importance_SN_ipp2_seed0.png"):  # fmt: skip
        with open(os.path.join(out, picture), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # Resumed when finished: nothing reruns, nothing is rewritten. The resumes call the
    # command's main() in this process (a command start costs ~8 s on these CPUs); their
    # training runs are still the real subprocesses.
    stamps = {n: os.stat(os.path.join(out, "runs", n, "result.json")).st_mtime_ns for n in names}
    capsys.readouterr()
    assert cli.main(args) == 0
    stdout = capsys.readouterr().out
    assert "4 runs (4 already finished)" in stdout and "[run " not in stdout
    assert stamps == {
        n: os.stat(os.path.join(out, "runs", n, "result.json")).st_mtime_ns for n in names
    }

    # A run interrupted before its result was recorded restarts from a clean folder.
    unfinished = os.path.join(out, "runs", "BN_ipp2_seed0")
    os.remove(os.path.join(unfinished, "result.json"))
    with open(os.path.join(unfinished, "last_checkpoint"), "w") as f:
        f.write("model_half_done.pth")  # would make a resumed trainer look for this
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 0, (captured.out + captured.err)[-4000:]
    assert "4 runs (3 already finished)" in captured.out
    assert "[run 1/1] BN_ipp2_seed0" in captured.out and "[run 2/" not in captured.out
    assert os.path.isfile(os.path.join(unfinished, "result.json"))
    with open(os.path.join(unfinished, "last_checkpoint")) as f:
        assert f.read() != "model_half_done.pth"


def test_outside_a_source_checkout_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "REPO", str(tmp_path))  # e.g. an installed wheel: no trainers
    with pytest.raises(SystemExit) as exit:
        cli.main(["--norms", "SSN"])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs from a source checkout" in err[0]
    assert "projects/SparseSN/train_net.py" in err[0]


def test_divergence_is_read_from_both_of_detectron2s_errors():
    from sn_det.projects.norm_study.runner import divergence

    loss = "...\nFloatingPointError: Loss became infinite or NaN at iteration=12!\nloss_dict = ..."
    assert divergence(loss) == 12
    # The RPN's error names no iteration: IterationTimer's summary does (14 timed iterations
    # after its 3 warm-up ones: the 17th iteration, 0-based 16, raised).
    rpn = (
        "FloatingPointError: Predicted boxes or scores contain Inf/NaN. Training has diverged.\n"
        "[12/01 06:20:12 d2.engine.hooks]: Overall training speed: 14 iterations in 0:00:05\n"
    )
    assert divergence(rpn) == 16
    assert divergence(rpn.splitlines()[0]) == -1
    assert divergence("RuntimeError: CUDA out of memory") is None
    assert divergence("") is None
