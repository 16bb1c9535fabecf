"""The training loop: detectron2's DefaultTrainer with SN-aware model building, optimizer and
evaluator choice."""

import logging
import os
import weakref

from detectron2.data import DatasetMapper, build_detection_test_loader, build_detection_train_loader
from detectron2.data.build import _train_loader_from_config
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model as d2_create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.engine import hooks as d2_hooks

from ..checkpoint import SNDetectionCheckpointer
from ..data import CheckedMapper, annotation_files_named, check_segmentations
from ..data.resumable_loader import ResumableTrainLoader
from ..modeling import build_model
from .batch_average import recompute_sn_batch_statistics
from .evaluation import build_evaluator, check_evaluator_type
from .hooks import SNBatchAverage, SNImportanceLogger
from .optimizer import build_sn_optimizer
from .resume import IsolatedEvalHook, ResumeState

__all__ = ["Trainer", "create_ddp_model"]


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` building any detectron2 model with SN in any norm key
    (:func:`sn_det.modeling.build_model`), with SN parameters grouped like norms in the
    optimizer, every test set evaluated by the evaluators its ``evaluator_type`` calls for
    (COCO box/mask/keypoint AP, sem_seg, panoptic, ...), and
    ``MODEL.WEIGHTS``/``--resume`` loaded by :class:`SNDetectionCheckpointer` (published
    ImageNet SN models load directly and completely), SN batch-average statistics before
    evaluation when ``TEST.SN_BATCH_AVG.ENABLED``, and SN importance ratios logged at every
    evaluation. Multi-process training works on CPU-only machines too (gloo).

    ``--resume`` is exact: checkpoints also hold each process's random generators and data
    position (:mod:`sn_det.engine.resume`), the training data loader continues where it
    stopped (:class:`ResumableTrainLoader`), and metrics.json gets no iteration twice."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__'s steps, in its order, with two differences: the model is
        # wrapped for several processes by create_ddp_model below (detectron2's always passes
        # device_ids=[local_rank], which DDP rejects for a CPU model, so --num-gpus 2 on a
        # CPU-only machine needs device_ids=None), and checkpoints load through
        # SNDetectionCheckpointer. (The parent's constructor is skipped on purpose.)
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):  # setup_logger is not called for d2
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = SNDetectionCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            min_loaded_fraction=cfg.MODEL.MIN_LOADED_FRACTION,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """detectron2's hooks, plus SN batch averaging (if TEST.SN_BATCH_AVG.ENABLED) where
        PreciseBN sits (before checkpointing and evaluation), importance-ratio logging
        before the writers, the resume state saved with each checkpoint, and evaluation
        isolated from the training's random generators."""
        ret = super().build_hooks()
        cfg = self.cfg
        period = cfg.TEST.EVAL_PERIOD
        ret = [IsolatedEvalHook.of(h) if type(h) is d2_hooks.EvalHook else h for h in ret]
        # Right before the checkpointer (which only the main process has; elsewhere where it
        # would be), so the saved random state and data position are those of its moment.
        at = next(
            i
            for i, h in enumerate(ret)
            if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))
        )
        main = comm.is_main_process()
        ret.insert(
            at,
            ResumeState(
                cfg.SOLVER.CHECKPOINT_PERIOD,
                self._trainer.data_loader,
                metrics_file=os.path.join(cfg.OUTPUT_DIR, "metrics.json") if main else None,
                writers=self._writers if main else (),
                eval_period=period,
            ),
        )
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

    def build_writers(self):
        self._writers = super().build_writers()  # ResumeState sets their positions
        return self._writers

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's training loader for the config (same dataset, mapper, sampler, batch
        contents), as a :class:`ResumableTrainLoader` whose position the checkpoints hold; a
        bad image or annotation names its file (CheckedMapper)."""
        # detectron2's own reading of the config (private, but it is what
        # build_detection_train_loader(cfg) calls): the sampler choice stays theirs.
        mapper = CheckedMapper(DatasetMapper(cfg, True), cfg.MODEL.MASK_ON)
        with annotation_files_named(cfg.DATASETS.TRAIN):  # a corrupt json named, not a traceback
            args = _train_loader_from_config(cfg, mapper=mapper)
        if cfg.MODEL.MASK_ON and isinstance(args["dataset"], list):
            check_segmentations(args["dataset"])  # before the first step, not mid-training
        if not isinstance(args["dataset"], list):  # an IterableDataset has no index stream
            logging.getLogger(__name__).warning(
                "The training dataset is not a list: detectron2's loader is used, and a "
                "resumed run starts the data order again."
            )
            return build_detection_train_loader(**args)
        world = comm.get_world_size()
        return ResumableTrainLoader(
            args["dataset"],
            args["mapper"],
            args["sampler"],
            args["total_batch_size"] // world,
            aspect_ratio_grouping=args["aspect_ratio_grouping"],
            num_workers=args["num_workers"],
            rank=comm.get_rank(),
            world_size=world,
        )

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
    def build_test_loader(cls, cfg, dataset_name):
        # Test-time mapping drops the annotations, so only images are checked.
        mapper = CheckedMapper(DatasetMapper(cfg, False), mask_on=False)
        with annotation_files_named([dataset_name]):
            return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_model(cls, cfg):
        """:func:`sn_det.modeling.build_model`: every norm key may name an sn_det norm, with
        detectron2's stock builders too."""
        model = build_model(cfg)
        logging.getLogger(__name__).info("Model:\n{}".format(model))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_sn_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The evaluators the dataset's ``evaluator_type`` calls for (see
        :func:`sn_det.engine.evaluation.build_evaluator`)."""
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def check_evaluators(cls, cfg) -> None:
        """Refuse, before any training, a test set that :meth:`build_evaluator` would refuse
        only at the first evaluation (after the whole run). A subclass that overrides
        build_evaluator decides for itself: nothing is checked for it unless it overrides
        this too (as SNSegTrainer does); one that evaluates without build_evaluator (its own
        ``test`` or hooks) should override this as well.

        Raises:
            ValueError: a DATASETS.TEST entry without a known ``evaluator_type``.
        """
        if getattr(cls.build_evaluator, "__func__", None) is not Trainer.build_evaluator.__func__:
            return
        for name in cfg.DATASETS.TEST:
            check_evaluator_type(name)


def create_ddp_model(model, **kwargs):
    """detectron2's ``create_ddp_model``, for CPU models too: their DistributedDataParallel
    takes ``device_ids=None`` (multi-process CPU training with gloo). GPU models get exactly
    detectron2's arguments."""
    if "device_ids" not in kwargs and next(model.parameters()).device.type == "cpu":
        kwargs["device_ids"] = None
    return d2_create_ddp_model(model, **kwargs)
