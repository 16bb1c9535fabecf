"""Exact resume: a training run killed with SIGKILL and resumed with --resume ends bit-identical
to an uninterrupted one; the data order, random states, metrics.json, the last_checkpoint tag
and the launcher's workers behave as README's "Resuming" says."""

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import INSTANT_RUN_ARGS
from detectron2.data import build_detection_train_loader
from detectron2.data.samplers import TrainingSampler

from sn_det.checkpoint import SNDetectionCheckpointer, load_checkpoint_file
from sn_det.data.resumable_loader import ResumableTrainLoader
from sn_det.engine.resume import trim_metrics
from sn_det.rng import capture_rng_state, isolated_rng, restore_rng_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")

# Ten images, landscape and portrait mixed, so aspect-ratio grouping leaves images waiting.
DICTS = [
    {"image_id": i, "width": 60 if i % 3 else 40, "height": 40 if i % 3 else 60} for i in range(10)
]


def augment(d):
    """A mapper drawing from all three global generators, as augmentations do."""
    return (d["image_id"], np.random.rand(), random.random(), torch.rand(()).item())


def loader(seed, num_workers=0):
    return ResumableTrainLoader(
        DICTS,
        augment,
        TrainingSampler(len(DICTS), seed=seed),
        2,
        aspect_ratio_grouping=True,
        num_workers=num_workers,
    )


def take(it, n):
    return [next(it) for _ in range(n)]


def test_batches_are_detectron2s_and_resume_continues_them():
    # detectron2's own loader (no workers) on the same stream: the batches to reproduce.
    d2 = build_detection_train_loader(
        DICTS,
        mapper=lambda d: d,  # its grouping reads width and height from the mapped dicts
        sampler=TrainingSampler(len(DICTS), seed=7),
        total_batch_size=2,
        aspect_ratio_grouping=True,
        num_workers=0,
    )
    expected_ids = [[d["image_id"] for d in b] for b in take(iter(d2), 12)]
    assert any(DICTS[b[0]]["width"] < DICTS[b[0]]["height"] for b in expected_ids)
    assert any(DICTS[b[0]]["width"] > DICTS[b[0]]["height"] for b in expected_ids)

    before = capture_rng_state()
    whole = take(iter(loader(7)), 12)
    assert [[s[0] for s in b] for b in whole] == expected_ids
    # Mapping in the main process leaves the training's generators where they were.
    after = capture_rng_state()
    assert after["numpy"] == before["numpy"] and after["python"] == before["python"]
    assert torch.equal(after["torch"], before["torch"])

    first = loader(7)
    head = take(iter(first), 5)
    state = first.state_dict()
    assert state["batches"] == 5 and state["seed"] == 7
    resumed = loader(123)  # another seed: the saved one must win
    resumed.load_state_dict(state)
    assert head + take(iter(resumed), 7) == whole  # same images, same augmentation draws
    # Augmentation depends on the sample's place in the stream, not on the worker mapping it.
    assert take(iter(loader(7, num_workers=2)), 12) == whole


def test_rng_state_round_trips_and_loads_as_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    path = str(tmp_path / "state.pth")
    torch.save({"rng": state}, path)
    with isolated_rng():
        random.seed(9)
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected


def metrics_iterations(path):
    with open(path) as f:
        return [json.loads(line)["iteration"] for line in f]


def test_trim_metrics_drops_what_the_resumed_run_writes_again(tmp_path):
    path = str(tmp_path / "metrics.json")
    # The killed run logged 19 and 39 after its checkpoint at 29, and was cut mid-line.
    with open(path, "w") as f:
        f.write('{"iteration": 19, "a": 1}\n{"iteration": 39, "a": 2}\n{"iteration": 5')
    assert trim_metrics(path, start_iter=30) == 19
    assert metrics_iterations(path) == [19]
    # Not in order (an evaluation line written late): only lines >= start go.
    with open(path, "w") as f:
        f.write('{"iteration": 39}\n{"iteration": 24}\n{"iteration": 19}\n')
    assert trim_metrics(path, start_iter=30) == 24
    assert metrics_iterations(path) == [24, 19]
    assert trim_metrics(str(tmp_path / "none.json"), 30) == -1


@pytest.fixture
def run_folder(tmp_path):
    """model_0000001.pth and model_0000003.pth complete, model_0000005.pth cut short."""
    model = torch.nn.Linear(2, 2)
    for it in (1, 3, 5):
        torch.save({"model": model.state_dict(), "iteration": it}, tmp_path / f"model_{it:07d}.pth")
    data = (tmp_path / "model_0000005.pth").read_bytes()
    (tmp_path / "model_0000005.pth").write_bytes(data[: len(data) // 2])
    return SNDetectionCheckpointer(model, save_dir=str(tmp_path)), tmp_path


@pytest.mark.parametrize(
    "tag,why",
    [
        ("", "missing or empty"),
        (None, "missing or empty"),
        ("model_0000009.pth", "does not exist"),
        ("model_0000005.pth", "not complete"),
    ],
)
def test_a_broken_tag_or_cut_checkpoint_falls_back_to_the_newest_complete(
    run_folder, tag, why, caplog
):
    checkpointer, folder = run_folder
    if tag is not None:
        (folder / "last_checkpoint").write_text(tag)
    caplog.set_level(logging.WARNING)
    assert checkpointer.has_checkpoint()
    assert checkpointer.get_checkpoint_file() == str(folder / "model_0000003.pth")
    assert why in caplog.text and "resuming from model_0000003.pth" in caplog.text
    assert checkpointer.resume_or_load("", resume=True)["iteration"] == 3


def test_a_good_tag_is_used_and_written_atomically(run_folder):
    checkpointer, folder = run_folder
    checkpointer.tag_last_checkpoint("model_0000001.pth")
    assert (folder / "last_checkpoint").read_text() == "model_0000001.pth"
    assert checkpointer.get_checkpoint_file() == str(folder / "model_0000001.pth")
    assert not [n for n in os.listdir(folder) if n.startswith(".tmp")]


def test_kill_9_and_resume_ends_bit_identical(instant_run, tmp_path):
    """A real tools/train_net.py killed with SIGKILL right after its first checkpoint, then
    --resume: final weights and logged losses equal the uninterrupted run's (instant_run)."""
    reference, _ = instant_run
    out = str(tmp_path / "run")
    args = INSTANT_RUN_ARGS + ["OUTPUT_DIR", out]
    log = open(str(tmp_path / "killed.log"), "w")
    proc = subprocess.Popen(
        [sys.executable, TRAIN_NET] + args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
    )
    tag = os.path.join(out, "last_checkpoint")
    deadline = time.monotonic() + 300
    try:
        while not (os.path.exists(tag) and open(tag).read() == "model_0000001.pth"):
            assert proc.poll() is None, open(log.name).read()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert not os.path.exists(os.path.join(out, "model_final.pth")), "killed too late"

    resumed = subprocess.run(
        [sys.executable, TRAIN_NET, "--resume"] + args,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-5000:]
    assert "Starting training from iteration 2" in resumed.stdout + resumed.stderr

    want = load_checkpoint_file(os.path.join(reference, "model_final.pth"))
    got = load_checkpoint_file(os.path.join(out, "model_final.pth"))
    assert want["model"].keys() == got["model"].keys()
    different = [k for k in want["model"] if not torch.equal(want["model"][k], got["model"][k])]
    assert not different, different[:5]

    def logged(folder):
        with open(os.path.join(folder, "metrics.json")) as f:
            lines = [json.loads(line) for line in f]
        return [
            {k: v for k, v in x.items() if "time" not in k and k != "eta_seconds"} for x in lines
        ]

    # The same lines (iterations and smoothed losses; timings aside), none twice.
    assert logged(out) == logged(reference)


PARENT = textwrap.dedent("""
    import importlib.util, multiprocessing as mp, os, sys, time

    def load_watch():  # by path: importing the sn_det package would cost seconds
        spec = importlib.util.spec_from_file_location("parent_watch", sys.argv[1])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    def worker(parent_pid, use_prctl):
        load_watch().exit_with_parent(parent_pid, use_prctl=use_prctl, interval=0.2)
        print("tied", flush=True)
        time.sleep(120)

    if __name__ == "__main__":
        p = mp.get_context("spawn").Process(
            target=worker, args=(os.getpid(), sys.argv[2] == "prctl"))
        p.start()
        print(p.pid, flush=True)
        time.sleep(120)
    """)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["prctl", "thread"])
def test_workers_exit_when_the_launcher_is_killed(tmp_path, how):
    script = tmp_path / "launcher.py"
    script.write_text(PARENT)
    watch = os.path.join(REPO, "sn_det", "engine", "parent_watch.py")
    launcher = subprocess.Popen(
        [sys.executable, str(script), watch, how], stdout=subprocess.PIPE, text=True
    )
    try:
        child = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == "tied"
        assert alive(child)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the worker outlived its launcher"
    finally:
        launcher.kill()
