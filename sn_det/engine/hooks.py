"""Training hooks for SN models: batch-average statistics and importance-ratio logging.

Both run when detectron2's EvalHook evaluates (every TEST.EVAL_PERIOD iterations and after
the last one), the batch averaging before the checkpoint and the evaluation, as PreciseBN.
"""

import logging

from detectron2.engine import HookBase
from detectron2.utils.events import get_event_storage

from ..modeling.importance import TERMS, importance_ratios
from .batch_average import batch_average_layers, recompute_sn_batch_statistics

__all__ = ["SNBatchAverage", "SNImportanceLogger"]


def _evaluates_now(trainer, period: int) -> bool:
    """Whether detectron2's EvalHook evaluates after this step."""
    next_iter = trainer.iter + 1
    return next_iter == trainer.max_iter or (period > 0 and next_iter % period == 0)


class SNBatchAverage(HookBase):
    """Recompute the BN-term statistics of every SN layer from ``num_iter`` training batches
    before each evaluation (see :func:`recompute_sn_batch_statistics`)."""

    def __init__(self, period: int, model, data_loader, num_iter: int):
        """
        Args:
            period: TEST.EVAL_PERIOD (0: only after the last iteration).
            model: the trained model (possibly DistributedDataParallel).
            data_loader: a training data loader of its own (not the trainer's).
            num_iter: batches per recomputation.
        """
        self._period = period
        self._model = model
        self._data_loader = data_loader
        self._num_iter = num_iter
        self._data_iter = None
        self._disabled = not batch_average_layers(model)
        if self._disabled:
            logging.getLogger(__name__).info(
                "SN batch averaging is disabled: the model has no SN layer with a trainable BN term."
            )

    def after_step(self):
        if not self._disabled and _evaluates_now(self.trainer, self._period):
            self.update_stats()

    def update_stats(self):
        if self._data_iter is None:
            self._data_iter = iter(self._data_loader)  # reused: each call sees new batches
        recompute_sn_batch_statistics(self._model, self._data_iter, self._num_iter)

    # The position of its data loader (when it has one to save) goes into checkpoints, so a
    # resumed run averages over the batches an uninterrupted run would have used.
    def state_dict(self):
        return (
            {"data": self._data_loader.state_dict()}
            if hasattr(self._data_loader, "state_dict")
            else {}
        )

    def load_state_dict(self, state):
        if "data" in state and hasattr(self._data_loader, "load_state_dict"):
            self._data_loader.load_state_dict(state["data"])


class SNImportanceLogger(HookBase):
    """Put the IN/LN/BN shares of every SN layer into the event storage when the model is
    evaluated, so detectron2's writers send them to TensorBoard (and metrics.json) as
    ``sn_importance/<layer>/{mean,var}_{IN,LN,BN}``."""

    def __init__(self, period: int, model):
        self._period = period
        self._model = model

    def after_step(self):
        if not _evaluates_now(self.trainer, self._period):
            return
        scalars = {}
        for row in importance_ratios(self._model):
            for stat, shares in (("mean", row.mean), ("var", row.var)):
                for term, share in zip(TERMS, shares):
                    scalars[f"sn_importance/{row.name}/{stat}_{term}"] = share
        if scalars:
            get_event_storage().put_scalars(**scalars, smoothing_hint=False)
