"""tools/train_net.py as a user runs it: train, --resume, --eval-only, and bad input."""

import contextlib
import io
import json
import math
import os
import re
import shutil

import pytest

from tool_runner import INSTANT, setup_cfg_here, train_net


def copypaste_results(log):
    """{task: [AP, AP50, AP75, APs, APm, APl]} from detectron2's 'copypaste' lines."""
    results, task = {}, None
    for line in log.splitlines():
        m = re.search(r"copypaste: Task: (\w+)", line)
        if m:
            task = m.group(1)
            continue
        m = re.search(r"copypaste: ([-0-9.nan,]+)$", line)
        if m and task:
            results[task] = [float(v) for v in m.group(1).split(",")]
            task = None
    return results


def pycocotools_ap(gt_json, results_json, iou_type):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with open(results_json) as f:
        results = json.load(f)
    if iou_type == "segm":
        # As COCO's evaluation (and detectron2) does: without the box, loadRes takes each
        # detection's area from its mask, not from its box.
        for r in results:
            r.pop("bbox", None)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_json)
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [100 * s for s in ev.stats[:6]]


@pytest.fixture(scope="module")
def trained(instant_run):
    return instant_run


def test_training_writes_checkpoints(trained):
    out, log = trained
    assert "Starting training from iteration 0" in log
    for name in ("model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint"):
        assert os.path.exists(os.path.join(out, name)), name


def test_resume_continues_the_iteration_count(trained, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(trained[0], out)  # the shared run stays as it was for other tests
    code, log = train_net(
        "--config-file",
        INSTANT,
        "--resume",
        "SOLVER.MAX_ITER",
        "6",
        "DATASETS.TEST",
        "()",
        "OUTPUT_DIR",
        out,
    )
    assert code == 0, log
    assert "Starting training from iteration 4" in log, log[-3000:]
    assert "iter: 5" in log


def test_two_processes_with_sync_sn_train_once_and_evaluate_on_both(tmp_path):
    """--num-gpus 2 on a CPU machine: two gloo processes through detectron2's launch, SyncSN
    in backbone and FPN (the heads keep plain SN), one image per process."""
    out = str(tmp_path)
    code, log = train_net(
        "--num-gpus",
        "2",
        "--config-file",
        INSTANT,
        "MODEL.RESNETS.NORM",
        "SyncSN",
        "MODEL.FPN.NORM",
        "SyncSN",
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "2",
        "OUTPUT_DIR",
        out,
        timeout=600,
    )
    assert code == 0, log[-5000:]
    checkpoints = sorted(f for f in os.listdir(out) if f.endswith(".pth"))
    assert checkpoints == ["model_0000001.pth", "model_0000003.pth", "model_final.pth"]
    with open(os.path.join(out, "log.txt")) as f:
        main_log = f.read()
    with open(os.path.join(out, "log.txt.rank1")) as f:
        rank1_log = f.read()
    # Written once, by the main process only.
    assert main_log.count("Saving checkpoint to") == 3
    assert "Saving checkpoint to" not in rank1_log
    # Both ranks evaluate their half of the 60 validation images.
    assert "Start inference on 30 batches" in main_log
    assert "Start inference on 30 batches" in rank1_log
    with open(os.path.join(out, "metrics.json")) as f:
        losses = [json.loads(line).get("total_loss") for line in f]
    losses = [v for v in losses if v is not None]
    assert len(losses) >= 1 and all(math.isfinite(v) for v in losses), losses
    assert "segm" in copypaste_results(log)
    # Each process took its share of the cores, not all of them (2.5x slower here).
    # (The workers start with all cores; this process may have capped its own.)
    if not any(os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        shared = re.search(r"2 training processes share this machine's (\d+) CPU threads: "
                           r"(\d+) each", main_log)  # fmt: skip
        assert shared, main_log[-3000:]
        assert int(shared.group(2)) == max(1, int(shared.group(1)) // 2), shared.group(0)


def test_cpu_threads_are_shared_once_by_the_processes_of_one_machine(monkeypatch):
    import torch
    from detectron2.utils import comm

    from sn_det.engine import cpu_threads

    before = torch.get_num_threads()
    monkeypatch.setattr(cpu_threads, "_shared", None)
    for name in cpu_threads.THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    local = [1]
    monkeypatch.setattr(cpu_threads, "_processes_on_this_machine", lambda: local[0])
    try:
        assert cpu_threads.share_cpu_threads("cpu") is None  # alone: torch's default stays
        local[0] = 4
        assert cpu_threads.share_cpu_threads("cuda") is None  # GPU training: not ours to cut
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert cpu_threads.share_cpu_threads("cpu") is None  # the user's choice stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        torch.set_num_threads(8)
        assert cpu_threads.share_cpu_threads("cpu") == 2 and torch.get_num_threads() == 2
        # Called again (a second setup in the same process): not divided again.
        assert cpu_threads.share_cpu_threads("cpu") == 2 and torch.get_num_threads() == 2
        monkeypatch.setattr(cpu_threads, "_shared", None)
        torch.set_num_threads(2)
        local[0] = 3
        assert cpu_threads.share_cpu_threads("cpu") == 1  # never below one thread
    finally:
        torch.set_num_threads(before)

    # Processes on this machine: detectron2's per-machine group, else torchrun's variable.
    monkeypatch.undo()
    assert cpu_threads._processes_on_this_machine() == 1  # no process group here
    monkeypatch.setattr(comm, "get_world_size", lambda: 4)
    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", None)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads._processes_on_this_machine() == 2
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert cpu_threads._processes_on_this_machine() == 1  # a user's own group: unknown
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    assert cpu_threads._processes_on_this_machine() == 1  # not torchrun's: unknown
    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", object())
    monkeypatch.setattr(comm, "get_local_size", lambda: 3)
    assert cpu_threads._processes_on_this_machine() == 3


def test_eval_only_prints_the_ap_pycocotools_computes(trained, tmp_path):
    out, _ = trained
    eval_dir = str(tmp_path)
    code, log = train_net(
        "--config-file",
        INSTANT,
        "--eval-only",
        "MODEL.WEIGHTS",
        os.path.join(out, "model_final.pth"),
        "OUTPUT_DIR",
        eval_dir,
    )
    assert code == 0, log
    printed = copypaste_results(log)
    assert set(printed) == {"bbox", "segm"}, log[-3000:]
    results_json = os.path.join(
        eval_dir, "inference", "sn_synth_val", "coco_instances_results.json"
    )
    with open(results_json) as f:
        assert len(json.load(f)) > 0, "the model made no predictions; nothing was compared"
    from detectron2.data import MetadataCatalog

    import sn_det  # noqa: F401  (registers the synthetic dataset)

    gt_json = MetadataCatalog.get("sn_synth_val").json_file
    for task in ("bbox", "segm"):
        expected = pycocotools_ap(gt_json, results_json, task)
        for got, want in zip(printed[task], expected):
            if want < 0:  # pycocotools' -1: no ground truth in that size range
                continue
            assert abs(got - want) < 1e-3, (task, printed[task], expected)


def test_bad_config_is_one_sentence_and_exit_2():
    code, log = train_net("--config-file", INSTANT, "MODEL.RESNETS.NORM", "SNN", timeout=120)
    assert code == 2, log
    assert "MODEL.RESNETS.NORM = 'SNN' is not a known norm type" in log
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "opts,message",
    [
        (["MODEL.RESNET.NORM", "SN"], "command-line opts: Non-existent key: MODEL.RESNET.NORM"),
        (["DATASETS.TEST", "('nope',)"], "'nope', which is not a registered dataset"),
        (["MODEL.DEVICE", "cuda"], "no CUDA GPU is available"),
    ],
)
def test_bad_config_values_are_refused_at_setup(opts, message):
    from sn_det.engine import ConfigError

    if opts[:2] == ["MODEL.DEVICE", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError) as e:
        setup_cfg_here(opts)
    assert message in str(e.value)


def test_missing_dataset_path_says_where_and_how(tmp_path):
    env_root = str(tmp_path / "nowhere")
    code, log = train_net(
        "--config-file",
        INSTANT,
        "DATASETS.TEST",
        "('coco_2017_val',)",
        env={"DETECTRON2_DATASETS": env_root},
        timeout=120,
    )
    assert code == 2, log
    assert f"{env_root}/coco/annotations/instances_val2017.json does not exist" in log
    assert "DETECTRON2_DATASETS" in log and "Traceback" not in log


def test_missing_config_file():
    code, log = train_net("--config-file", "configs/nope.yaml", timeout=120)
    assert code == 2 and "cannot read the config file" in log and "does not exist" in log
    assert "Traceback" not in log


def test_key_typo_in_the_config_file_names_file_and_key(tmp_path):
    from sn_det.engine import ConfigError

    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{INSTANT}"\nMODEL:\n  RESNETS:\n    NORMM: "SN"\n')
    with pytest.raises(ConfigError) as e:
        setup_cfg_here(config_file=bad)
    assert f"{bad}: Non-existent config key: MODEL.RESNETS.NORMM" in str(e.value)
