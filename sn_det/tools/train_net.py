"""Train or evaluate detectron2 models with Switchable Normalization
(``python -m sn_det.tools.train_net`` or the repository's ``tools/train_net.py``).

This is detectron2's ``tools/train_net.py`` with sn_det's config keys, builders and
SN-aware optimizer; every flag of detectron2's parser works as usual. Training writes
checkpoints and metrics to OUTPUT_DIR; every test set is evaluated by the evaluators its
``evaluator_type`` calls for (COCO box/mask/keypoint AP, sem_seg, panoptic, ...).
A project's config (projects/SparseSN, SNSegmentation, SNPointRend) runs with the project's
trainer and config keys: given with ``--project``, or found from the config file's folder,
so an installed package trains the projects' shipped recipes too (see :func:`invoke_main`).
"""

import logging
import os
import sys
from typing import Callable, Optional, Sequence

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results

from sn_det.checkpoint import CheckpointConversionError, SNDetectionCheckpointer
from sn_det.data import DatasetFileError
from sn_det.engine import (
    ConfigError,
    Trainer,
    add_project_argument,
    project_config_adders,
    selected_project,
    setup_cfg,
)
from sn_det.engine.parent_watch import exit_with_parent
from sn_det.projects import project_trainer

# Errors whose message is one sentence for the user: printed as "error: ..." with exit 2.
USER_ERRORS = (ConfigError, CheckpointConversionError, DatasetFileError)


class _NoTracebackForUserErrors(logging.Filter):
    """detectron2's training loop logs every exception with its traceback before re-raising
    it; for a user error the sentence printed on exit says it all."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], USER_ERRORS):
            record.msg, record.args = f"{record.msg} {record.exc_info[1]}", ()
            record.exc_info = record.exc_text = None
        return True


EXAMPLES = """examples:
  # tiny SN Mask R-CNN on the embedded synthetic data (CPU, under a minute):
  tools/train_net.py --config-file configs/quick_schedules/mask_rcnn_sn_instant_test.yaml
  # RetinaNet (also cascade_mask_rcnn_sn_instant_test.yaml, keypoint_rcnn_sn_instant_test.yaml):
  tools/train_net.py --config-file configs/quick_schedules/retinanet_sn_instant_test.yaml
  # continue from the last checkpoint in OUTPUT_DIR:
  tools/train_net.py --config-file CFG --resume
  # evaluate a checkpoint:
  tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/model_final.pth
  # two processes on a CPU-only machine (gloo), the BN term of SN synchronized over both:
  tools/train_net.py --num-gpus 2 --config-file configs/quick_schedules/mask_rcnn_sn_instant_test.yaml \\
      MODEL.RESNETS.NORM SyncSN MODEL.FPN.NORM SyncSN
  # the seed's recipe on 8 GPUs:
  tools/train_net.py --num-gpus 8 --config-file configs/sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml
  # a project's recipe (its trainer and config keys follow from the folder, or --project):
  tools/train_net.py --config-file projects/SparseSN/configs/quick_schedules/mask_rcnn_ssn_instant_test.yaml
"""


def main(args, trainer_cls=Trainer, config_adders: Sequence[Callable] = ()):
    cfg = setup_cfg(args, config_adders=config_adders)
    if args.eval_only:
        model = trainer_cls.build_model(cfg)
        SNDetectionCheckpointer(
            model, save_dir=cfg.OUTPUT_DIR, min_loaded_fraction=cfg.MODEL.MIN_LOADED_FRACTION
        ).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = trainer_cls.test_with_sn_batch_average(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _main_or_exit(args, trainer_cls, config_adders, launcher_pid=None):
    if launcher_pid is not None:
        exit_with_parent(launcher_pid)  # no orphans training on when the launcher is killed
    logging.getLogger("detectron2.engine.train_loop").addFilter(_NoTracebackForUserErrors())
    try:
        result = main(args, trainer_cls, config_adders)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if comm.get_world_size() > 1:
        # A rank can leave its last collective while a peer is still reading from it; exiting
        # then aborted the peer now and then (seen with gloo). Meet before exiting. (No
        # destroy_process_group: with gloo it hangs now and then, pytorch/pytorch#75097.)
        comm.synchronize()
    return result


def invoke_main(
    trainer_cls=None,
    config_adders: Sequence[Callable] = (),
    epilog: str = EXAMPLES,
    project: Optional[str] = None,
) -> None:
    """Parse detectron2's training arguments (plus ``--project``) and launch :func:`main` in
    every process.

    Args:
        trainer_cls: a subclass of sn_det's Trainer; None: the project's (see below), else
            sn_det's.
        config_adders: functions adding config keys (module-level, so that the spawned
            worker processes can import them), besides the project's.
        epilog: the examples shown by ``--help``.
        project: the project whose trainer and config keys to use (a projects/ folder name,
            ``sn_det.projects.CONFIG_ADDERS``); the default of ``--project``, which itself
            defaults to the projects/<Folder> the config file lies in.
    """
    parser = default_argument_parser(epilog=epilog)
    add_project_argument(parser)
    if project is not None:
        parser.set_defaults(project=project)
    args = parser.parse_args()
    project = selected_project(args)
    if trainer_cls is None:
        trainer_cls = project_trainer(project)
    config_adders = tuple(config_adders) + project_config_adders(args)
    if project:
        print(f"Project {project}: {trainer_cls.__name__}, with its config keys")
    # Config errors are reported before any worker starts, as one sentence and exit 2.
    try:
        cfg = setup_cfg(args, default=False, config_adders=config_adders)
        try:
            trainer_cls.check_evaluators(cfg)  # a test set no evaluator serves, before training
        except ValueError as e:
            raise ConfigError(str(e)) from None
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("Command Line Args:", args)
    launch(
        _main_or_exit,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, trainer_cls, config_adders, os.getpid()),
    )


if __name__ == "__main__":
    invoke_main()
