"""One run of the study: the real training command as a subprocess, in its own folder, and its
result recorded atomically.

A run folder ``<output>/runs/<norm>_ipp<k>_seed<s>/`` holds detectron2's OUTPUT_DIR (config.yaml,
log.txt, metrics.json, COCOEvaluator's inference/), ``stdout.log`` (everything the command
printed) and, once the run is finished, ``result.json``. The result file is written last, by
rename, so a run is finished exactly when it exists; a folder without it is a run that was
interrupted or failed, and is wiped before the run starts again.
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import List, Optional

from sn_det.atomic_files import new_temp_file

from .plan import CONFIG, REPO, Run

__all__ = [
    "RunFailed",
    "RESULT_FILE",
    "read_result",
    "divergence",
    "write_json_atomically",
    "execute",
    "stop_all",
]

RESULT_FILE = "result.json"
LOG_FILE = "stdout.log"  # detectron2 itself writes log.txt in the same folder
# detectron2 raises FloatingPointError when training diverges: SimpleTrainer's "Loss became
# infinite or NaN at iteration=12!", or the RPN's "Predicted boxes or scores contain Inf/NaN.
# Training has diverged." (NaN proposals before any loss is computed; no iteration given).
_DIVERGED = re.compile(
    r"FloatingPointError: (Loss became infinite or NaN|Predicted boxes or scores contain Inf/NaN)"
)
_LOSS_ITERATION = re.compile(r"FloatingPointError: Loss became infinite or NaN at iteration=(\d+)")
# IterationTimer's summary after the exception: iterations run, less its 3 warm-up ones.
_TIMED_ITERATIONS = re.compile(r"Overall training speed: (\d+) iterations")
_TIMER_WARMUP = 3


def divergence(log_text: str):
    """Whether a failed training command's output shows detectron2's divergence error, and
    at which (0-based) iteration.

    Returns:
        None when it did not diverge; else the iteration, or -1 where the output does not
        say (the RPN error, without the IterationTimer summary).
    """
    if not _DIVERGED.search(log_text):
        return None
    at = _LOSS_ITERATION.search(log_text)
    if at:
        return int(at.group(1))
    timed = _TIMED_ITERATIONS.findall(log_text)
    # IterationTimer counts iter + 1 - start_iter - warm-up, with iter the one that raised.
    return int(timed[-1]) + _TIMER_WARMUP - 1 if timed else -1


# Process groups of the training commands running now (runs may execute in threads).
_running = set()
_running_lock = threading.Lock()


def stop_all() -> None:
    """Kill every training command started by :func:`execute` that is still running (each
    runs in its own process group, so its worker processes go too)."""
    with _running_lock:
        for pgid in _running:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@dataclass
class RunFailed(Exception):
    """A run that ended without a result; ``reason`` is one sentence, ``log`` its output."""

    reason: str
    log: str


def read_result(run_dir: str) -> Optional[dict]:
    """The recorded result of a finished run, None for a run that has not finished."""
    path = os.path.join(run_dir, RESULT_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_json_atomically(path: str, data) -> None:
    """Write ``data`` as JSON to a temporary file beside ``path``, then rename it into place:
    readers see the old file or the whole new one, never a part."""
    fd, tmp = new_temp_file(os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def command(run: Run, device: str, run_dir: str, python: str = sys.executable) -> List[str]:
    """The training command line of ``run`` (detectron2's flags, then the config overrides)."""
    return [
        python,
        os.path.join(REPO, run.norm.trainer),
        "--num-gpus", str(run.norm.processes),
        # a free port chosen by detectron2's launch, so that concurrent jobs never collide
        "--dist-url", "auto",
        "--config-file", CONFIG,
        *run.opts(device, run_dir),
    ]  # fmt: skip


def _child_env(threads: Optional[int]) -> dict:
    env = dict(os.environ)
    if threads and "OMP_NUM_THREADS" not in env:  # the user's own setting wins
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _final_metrics(run_dir: str) -> Optional[dict]:
    """The last metrics.json record with COCOEvaluator's box AP (written after training)."""
    path = os.path.join(run_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    found = None
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            if "bbox/AP" in record:
                found = record
    return found


def _finite(value) -> Optional[float]:
    return float(value) if value is not None and math.isfinite(value) else None


def execute(
    run: Run,
    device: str,
    run_dir: str,
    keep_checkpoint: bool = False,
    threads: Optional[int] = None,
) -> dict:
    """Train and evaluate ``run`` from scratch in ``run_dir`` and record its result there.

    Args:
        threads: intra-op CPU threads of each training process (OMP_NUM_THREADS), so that
            concurrent runs or processes share the cores instead of oversubscribing them;
            None leaves PyTorch's default.

    Returns:
        the result (also written to ``run_dir/result.json``): the run's settings, ``status``
        ("ok", or "diverged" when the loss became NaN/infinite, a result of the setting, with
        no AP), ``box_ap``/``mask_ap``, ``wall_s``, ``cpu_s`` (user+system time of the
        command and its processes: training processes, data loader workers), and for SN-type norms ``importance`` (see
        :func:`norm_study.importance.switch_importance`).

    Raises:
        RunFailed: the command failed for another reason, or wrote no evaluation.
    """
    if os.path.exists(run_dir):  # an interrupted or failed earlier attempt: start clean
        shutil.rmtree(run_dir)
    os.makedirs(run_dir)
    log = os.path.join(run_dir, LOG_FILE)
    cmd = command(run, device, run_dir)
    start = time.monotonic()
    with open(log, "w") as out:
        out.write(" ".join(cmd) + "\n\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_child_env(threads),
            cwd=REPO,
            start_new_session=True,  # its own process group: stopped as a whole
        )
        with _running_lock:
            _running.add(proc.pid)
        try:
            # wait4: this child's own CPU time (with its reaped descendants), correct even
            # while other runs execute concurrently.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # interrupted: leave no training process behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            with _running_lock:
                _running.discard(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    cpu = usage.ru_utime + usage.ru_stime

    schedule = run.schedule()
    result = {
        "run": run.name,
        "norm": run.norm.name,
        "ims_per_process": run.ims_per_process,
        "processes": run.norm.processes,
        "total_batch": run.total_batch,
        "seed": run.seed,
        "images": run.images,
        "input_size": run.input_size,
        "device": device,
        "iterations": schedule["iterations"],
        "lr": schedule["lr"],
        "status": "ok",
        "diverged_at": None,
        "box_ap": None,
        "mask_ap": None,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "command": cmd,
        "importance": None,
    }
    if proc.returncode != 0:
        with open(log) as f:
            diverged_at = divergence(f.read())
        if diverged_at is None:
            raise RunFailed(f"the training command exited with status {proc.returncode}", log)
        result.update(status="diverged", diverged_at=diverged_at)
    else:
        metrics = _final_metrics(run_dir)
        if metrics is None:
            raise RunFailed("the training command wrote no evaluation to metrics.json", log)
        result.update(box_ap=_finite(metrics["bbox/AP"]), mask_ap=_finite(metrics.get("segm/AP")))
        weights = os.path.join(run_dir, "model_final.pth")
        if run.norm.switches:
            from .importance import switch_importance  # imports detectron2: only when needed

            result["importance"] = switch_importance(os.path.join(run_dir, "config.yaml"), weights)
        if not keep_checkpoint and os.path.exists(weights):
            os.remove(weights)  # everything the report needs is in the result
    write_json_atomically(os.path.join(run_dir, RESULT_FILE), result)
    return result
