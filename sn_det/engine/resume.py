"""Exact resume: what a checkpoint holds besides weights, optimizer and scheduler, and what
``--resume`` puts back before the first resumed step.

A run killed (even with kill -9) and resumed with ``--resume`` must continue as if it had
never stopped. detectron2 restores the weights, the optimizer, the scheduler and the
iteration; this adds, per process:

- the random generators (Python, NumPy, torch CPU, CUDA), captured at each checkpoint and
  restored as the last thing before the first resumed step;
- the training data loader's position (:class:`sn_det.data.resumable_loader.ResumableTrainLoader`),
  so the data order continues instead of starting again;
- the recent history of the logged scalars, so the smoothed values written after a resume
  (medians over the last 20 iterations) are those of an uninterrupted run;

and, in ``metrics.json``: detectron2's JSONWriter appends, so a resumed run re-logged the
iterations that the killed run had written after its last checkpoint (duplicates). At resume
the lines from the first resumed iteration on are cut (and a line cut off by the kill), and
the checkpoint's own iteration is written if the kill came between saving the checkpoint
and writing that line. On a CPU with ``DATALOADER.NUM_WORKERS 0`` and a fixed ``SEED`` the
resumed run ends bit-identical to an uninterrupted one.

Evaluation runs with the generators isolated (:class:`IsolatedEvalHook`): the checkpoint of
an iteration is written before that iteration's evaluation, so an evaluation that moved the
generators would make the uninterrupted run differ from the resumed one.
"""

import json
import logging
import os
from typing import List, Optional

from detectron2.engine import HookBase
from detectron2.engine import hooks as d2_hooks
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter, TensorboardXWriter

from ..rng import capture_rng_state, isolated_rng, restore_rng_state

__all__ = ["IsolatedEvalHook", "ResumeState", "trim_metrics"]

logger = logging.getLogger(__name__)


def trim_metrics(path: str, start_iter: int) -> int:
    """Cut the lines of a JSONWriter file that a resumed run starting at ``start_iter`` writes
    again (iteration >= start_iter), and a last line cut off mid-write. The file is changed in
    place (JSONWriter may already hold it open for appending).

    Returns:
        the largest iteration of the lines kept, -1 if none.
    """
    if not os.path.isfile(path):
        return -1
    with open(path, "rb") as f:
        data = f.read()
    kept, last, dropped = [], -1, 0
    for line in data.splitlines(keepends=True):
        try:
            iteration = json.loads(line)["iteration"]
            complete = line.endswith(b"\n")
        except (ValueError, KeyError, TypeError):
            iteration, complete = None, False
        if complete and iteration is not None and iteration < start_iter:
            kept.append(line)
            last = max(last, iteration)
        else:
            dropped += 1
    if dropped:
        new = b"".join(kept)
        with open(path, "r+b") as f:
            if not data.startswith(new):  # lines to drop before kept ones: rewrite
                f.write(new)
            f.truncate(len(new))
        logger.info(
            f"{path}: removed {dropped} line(s) from iteration {start_iter} on, which the "
            "resumed run writes again"
        )
    return last


def _scalar_window(storage, window: int) -> dict:
    """{name: {"hint": smoothing hint, "values": [[value, iteration], ...]}}: the samples of
    each scalar within ``window`` iterations of its latest, what the writers' medians read."""
    hints = storage.smoothing_hints()
    out = {}
    for name, history in storage.histories().items():
        values = history.values()
        if not values:
            continue
        latest = values[-1][1]
        out[name] = {
            "hint": bool(hints.get(name, True)),
            "values": [[float(v), int(i)] for v, i in values if i > latest - window],
        }
    return out


class IsolatedEvalHook(d2_hooks.EvalHook):
    """detectron2's EvalHook, evaluating with the random generators isolated: evaluation
    (e.g. creating the test loader's iterator draws a seed) leaves training's draws as they
    were, so whether and when a run evaluates does not change its training."""

    @classmethod
    def of(cls, hook: d2_hooks.EvalHook) -> "IsolatedEvalHook":
        """The same evaluation (period, function, after-train flag) as ``hook``."""
        return cls(hook._period, hook._func, hook._eval_after_train)

    def _do_eval(self):
        with isolated_rng():
            return super()._do_eval()


class ResumeState(HookBase):
    """Saves each process's generators and data position (and, in the main process, the
    recent scalar history) in every checkpoint, and restores them on ``--resume``.

    Place it right before detectron2's PeriodicCheckpointer (where that would be in other
    processes): the state is captured after the iteration's training work, at the moment the
    checkpoint is written. It is present in every process, since gathering the states is a
    collective step.
    """

    def __init__(
        self,
        checkpoint_period: int,
        data_loader,
        metrics_file: Optional[str] = None,
        writers: List = (),
        eval_period: int = 0,
        window: int = 20,
    ):
        """
        Args:
            checkpoint_period: SOLVER.CHECKPOINT_PERIOD (the PeriodicCheckpointer's).
            data_loader: the trainer's training loader; its position is saved when it has
                ``state_dict``/``load_state_dict``.
            metrics_file: the main process's JSONWriter file (None in other processes).
            writers: the main process's event writers (their JSON/TensorBoard positions are
                set to what the metrics file holds after a resume).
            eval_period: TEST.EVAL_PERIOD (to say when a kill cut off an evaluation).
            window: iterations of scalar history kept (the writers' median window).
        """
        self._period = checkpoint_period
        self._data_loader = data_loader
        self._metrics_file = metrics_file
        self._writers = list(writers)
        self._eval_period = eval_period
        self._window = window
        self._snapshot = None
        self._loaded = None

    def _saves_now(self) -> bool:
        # PeriodicCheckpointer's schedule: every period, and after the last iteration.
        it = self.trainer.iter
        return (it + 1) % self._period == 0 or it >= self.trainer.max_iter - 1

    def _process_state(self) -> dict:
        state = {"rng": capture_rng_state()}
        if hasattr(self._data_loader, "state_dict"):
            state["data"] = self._data_loader.state_dict()
        return state

    def after_step(self):
        if not self._saves_now():
            return
        local = self._process_state()
        processes = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
        self._snapshot = {"iteration": self.trainer.iter, "processes": processes}
        if comm.is_main_process():
            self._snapshot["scalars"] = _scalar_window(self.trainer.storage, self._window)

    def state_dict(self) -> dict:
        if self._snapshot is not None and self._snapshot["iteration"] == self.trainer.iter:
            return self._snapshot
        # A save outside the schedule (Trainer.checkpointer.save by hand): this process only.
        return {"iteration": self.trainer.iter, "processes": [self._process_state()]}

    def load_state_dict(self, state: dict) -> None:
        self._loaded = state

    def before_train(self):
        start = self.trainer.start_iter
        if start == 0:
            return
        if comm.is_main_process():
            self._restore_metrics(start)
        rank = comm.get_rank()
        processes = (self._loaded or {}).get("processes", [])
        if rank >= len(processes):
            logger.warning(
                "The checkpoint holds no data position and random state for this process "
                f"(rank {rank}; written by an older sn_det or another number of processes): "
                "the data order starts again and the run will not match an uninterrupted one."
            )
            return
        state = processes[rank]
        if "data" in state and hasattr(self._data_loader, "load_state_dict"):
            self._data_loader.load_state_dict(state["data"])
        restore_rng_state(state["rng"])  # last: nothing may draw before the first step
        logger.info(f"Restored the data position and random state of iteration {start - 1}")

    def _restore_metrics(self, start: int) -> None:
        last = trim_metrics(self._metrics_file, start) if self._metrics_file else -1
        storage = self.trainer.storage
        for name, saved in (self._loaded or {}).get("scalars", {}).items():
            for value, iteration in saved["values"]:
                storage.put_scalar(name, value, smoothing_hint=saved["hint"], cur_iter=iteration)
        for w in self._writers:
            if isinstance(w, (JSONWriter, TensorboardXWriter)):
                w._last_write = last  # what is in the file is not written again
        checkpoint_iter = start - 1
        if last < checkpoint_iter and self._loaded and self._loaded.get("scalars"):
            # Killed after saving the checkpoint of this iteration, before logging it: log it
            # now, as the writers would have (they check their own schedule).
            self._replay_writers(checkpoint_iter)

    def _replay_writers(self, iteration: int) -> None:
        writer_hooks = [h for h in self.trainer._hooks if isinstance(h, d2_hooks.PeriodicWriter)]
        storage, start = self.trainer.storage, self.trainer.iter
        self.trainer.iter = storage.iter = iteration
        try:
            for h in writer_hooks:
                h.after_step()
        finally:
            self.trainer.iter = storage.iter = start
        next_iter = iteration + 1
        if (
            self._eval_period > 0
            and next_iter % self._eval_period == 0
            and next_iter != self.trainer.max_iter
        ):
            logger.warning(
                f"The stopped run had not finished the evaluation of iteration {iteration}; "
                f"evaluate model_{iteration:07d}.pth with --eval-only or tools/eval_continuous.py"
            )
