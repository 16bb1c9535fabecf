"""The training loop: detectron2's DefaultTrainer with SN-aware optimizer and COCO evaluation."""

import contextlib
import os
import weakref
from unittest import mock

import detectron2.engine.defaults as d2_defaults
from detectron2.engine import DefaultTrainer
from detectron2.engine import hooks as d2_hooks
from detectron2.evaluation import COCOEvaluator

from ..checkpoint import SNDetectionCheckpointer
from .batch_average import recompute_sn_batch_statistics
from .hooks import SNBatchAverage, SNImportanceLogger
from .optimizer import build_sn_optimizer

__all__ = ["Trainer"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with SN parameters grouped like norms in the optimizer, every test
    set evaluated by ``COCOEvaluator`` (box AP, and mask AP when masks are predicted), and
    ``MODEL.WEIGHTS``/``--resume`` loaded by :class:`SNDetectionCheckpointer` (published
    ImageNet SN models load directly and completely), SN batch-average statistics before
    evaluation when ``TEST.SN_BATCH_AVG.ENABLED``, and SN importance ratios logged at every
    evaluation. Multi-process training works on CPU-only machines too (gloo)."""

    def __init__(self, cfg):
        with _ddp_for_any_device():
            super().__init__(cfg)
        # DefaultTrainer builds a plain DetectionCheckpointer; loading goes through ours.
        # (The periodic-checkpoint hook keeps the plain one: saving is identical.)
        self.checkpointer = SNDetectionCheckpointer(
            self._trainer.model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )

    def build_hooks(self):
        """detectron2's hooks, plus SN batch averaging (if TEST.SN_BATCH_AVG.ENABLED) where
        PreciseBN sits (before checkpointing and evaluation), and importance-ratio logging
        before the writers."""
        ret = super().build_hooks()
        cfg = self.cfg
        period = cfg.TEST.EVAL_PERIOD
        if cfg.TEST.SN_BATCH_AVG.ENABLED:
            after = next(i for i, h in enumerate(ret) if isinstance(h, d2_hooks.LRScheduler))
            ret.insert(
                after + 1,
                SNBatchAverage(
                    period,
                    self.model,
                    self.build_batch_average_loader(cfg),  # its own: training batches unchanged
                    cfg.TEST.SN_BATCH_AVG.NUM_ITER,
                ),
            )
        writers = [i for i, h in enumerate(ret) if isinstance(h, d2_hooks.PeriodicWriter)]
        ret.insert(writers[0] if writers else len(ret), SNImportanceLogger(period, self.model))
        return ret

    @classmethod
    def test_with_sn_batch_average(cls, cfg, model, data=None):
        """Evaluate as :meth:`test`, first recomputing SN batch-average statistics when
        TEST.SN_BATCH_AVG.ENABLED (the --eval-only and continuous-evaluation path).

        Args:
            data: an iterator over :meth:`build_batch_average_loader`, for callers that
                evaluate repeatedly (building a loader reads the training annotations);
                None builds one.
        """
        if cfg.TEST.SN_BATCH_AVG.ENABLED:
            if data is None:
                data = iter(cls.build_batch_average_loader(cfg))
            recompute_sn_batch_statistics(model, data, cfg.TEST.SN_BATCH_AVG.NUM_ITER)
        return cls.test(cfg, model)

    @classmethod
    def build_batch_average_loader(cls, cfg):
        """A training data loader for batch averaging, in the main process (as detectron2
        builds PreciseBN's: no worker processes to start for a few hundred batches)."""
        loader_cfg = cfg.clone()
        loader_cfg.defrost()
        loader_cfg.DATALOADER.NUM_WORKERS = 0
        return cls.build_train_loader(loader_cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_sn_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(dataset_name, output_dir=output_folder)


@contextlib.contextmanager
def _ddp_for_any_device():
    """Let DefaultTrainer wrap a CPU model in DistributedDataParallel.

    detectron2's ``create_ddp_model`` always passes ``device_ids=[local_rank]``, which DDP
    rejects for a CPU module; multi-process CPU training (``--num-gpus 2`` with gloo) needs
    ``device_ids=None``. Only DefaultTrainer.__init__'s call is redirected, and GPU models get
    exactly detectron2's arguments.
    """
    create = d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        if "device_ids" not in kwargs and next(model.parameters()).device.type == "cpu":
            kwargs["device_ids"] = None
        return create(model, **kwargs)

    with mock.patch.object(d2_defaults, "create_ddp_model", create_ddp_model):
        yield
