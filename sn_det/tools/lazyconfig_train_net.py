"""Train or evaluate an SN model from a LazyConfig (Python) config
(``python -m sn_det.tools.lazyconfig_train_net`` or ``tools/lazyconfig_train_net.py``).

detectron2's LazyConfig training loop, with what SN needs: "SN"/"SyncSN" names in the
config's norm keys become SN layers (``sn_det.lazy.resolve_lazy_norms``), checkpoints load
through sn_det's checkpointer (published ImageNet SN models convert in memory), and the
embedded synthetic data is generated when a config names it. The config has detectron2's
LazyConfig sections: ``model``, ``dataloader`` (``train``, ``test``, ``evaluator``),
``optimizer``, ``lr_multiplier`` and ``train`` (see detectron2's ``common/train.py``).

Examples:
  tools/lazyconfig_train_net.py --config-file configs/lazy/mask_rcnn_R_18_FPN_sn_synthetic.py
  tools/lazyconfig_train_net.py --config-file CFG.py --eval-only train.init_checkpoint=model.pth
  tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/lazy/mask_rcnn_R_50_FPN_2x_sn.py
"""

import logging
import os
import sys

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import (
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)

from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, ListConfig

from sn_det.checkpoint import CheckpointConversionError, SNDetectionCheckpointer
from sn_det.data import DatasetFileError, prepare_dataset_names
from sn_det.engine.parent_watch import exit_with_parent
from sn_det.engine import sn_process_setup
from sn_det.engine.trainer import create_ddp_model  # CPU models too (gloo)
from sn_det.lazy import build_lazy_model, resolve_lazy_norms

logger = logging.getLogger("sn_det")


class LazyConfigError(Exception):
    """A LazyConfig that cannot run as written; the message is one sentence."""


def _dataset_names(node):
    """Every dataset name under a ``names`` key of the dataloader section."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node[key]
            if key == "names":
                yield from ([value] if isinstance(value, str) else list(value))
            elif isinstance(value, (DictConfig, ListConfig)):
                yield from _dataset_names(value)
    elif isinstance(node, ListConfig):
        for value in node:
            yield from _dataset_names(value)


def load_lazy_config(path: str, overrides=()):
    """LazyConfig.load + command-line ``key=value`` overrides + SN names resolved.

    Raises:
        LazyConfigError: an unreadable file, a missing section or a bad override.
    """
    try:
        cfg = LazyConfig.load(path)
        cfg = LazyConfig.apply_overrides(cfg, list(overrides))
    except FileNotFoundError as e:
        raise LazyConfigError(f"cannot read the config file: {e}") from None
    except Exception as e:  # omegaconf/hydra parse errors of the file or the overrides
        raise LazyConfigError(f"{path}: {type(e).__name__}: {e}") from None
    missing = [
        k for k in ("model", "dataloader", "optimizer", "lr_multiplier", "train") if k not in cfg
    ]
    if missing:
        raise LazyConfigError(f"{path} has no {', '.join(missing)} section (see --help)")
    try:
        resolve_lazy_norms(cfg)
    except ValueError as e:
        raise LazyConfigError(str(e)) from None
    return cfg


def check_datasets(cfg, eval_only: bool) -> None:
    """The dataloader's datasets ready to read, as the yacs tools have them: the synthetic
    ones generated, the files of the others checked (a missing COCO folder is one sentence,
    not a pycocotools traceback). Training sets are not read for --eval-only.

    Raises:
        LazyConfigError: an unregistered name, a missing file, an unreadable test json.
    """
    groups = []
    if not eval_only and "train" in cfg.dataloader:
        groups.append(("dataloader.train", cfg.dataloader.train, False))
    if "test" in cfg.dataloader:
        groups.append(("dataloader.test", cfg.dataloader.test, True))
    for key, node, test in groups:
        try:
            prepare_dataset_names(key, list(_dataset_names(node)), test=test)
        except (KeyError, ValueError, FileNotFoundError, ImportError, DatasetFileError) as e:
            raise LazyConfigError(str(e.args[0] if e.args else e)) from None


def check_train_settings(cfg, resume: bool) -> None:
    """The ``train`` settings sn_det reads, checked before any worker starts.

    Raises:
        LazyConfigError: ``train.min_loaded_fraction`` not a number in [0, 1], or a local
            ``train.init_checkpoint`` that does not exist (unless --resume finds a checkpoint
            in ``train.output_dir``; fvcore would assert deep inside its checkpointer).
    """
    fraction = cfg.train.get("min_loaded_fraction", None)
    if fraction is not None and (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 <= fraction <= 1
    ):
        raise LazyConfigError(
            f"train.min_loaded_fraction must be a number from 0 to 1, got {fraction!r}"
        )
    weights = cfg.train.get("init_checkpoint", "")
    if not weights or "://" in weights or os.path.exists(weights):
        return
    output_dir = cfg.train.get("output_dir", "")
    if resume and os.path.exists(os.path.join(output_dir, "last_checkpoint")):
        return
    raise LazyConfigError(
        f"train.init_checkpoint = {weights!r} does not exist; convert the published ImageNet "
        "SN model there (tools/convert_sn_to_d2.py, see the README) or point "
        "train.init_checkpoint at it, or set train.init_checkpoint='' to train from scratch"
    )


def _checkpointer(cfg, model, **kwargs) -> SNDetectionCheckpointer:
    """sn_det's checkpointer with ``train.min_loaded_fraction`` (default 0.5, as
    MODEL.MIN_LOADED_FRACTION): a checkpoint that fills less of the model is refused."""
    return SNDetectionCheckpointer(
        model,
        min_loaded_fraction=cfg.train.get("min_loaded_fraction", None),
        fraction_setting="train.min_loaded_fraction={}",
        **kwargs,
    )


def do_test(cfg, model):
    if "evaluator" not in cfg.dataloader:
        return {}
    results = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    print_csv_format(results)
    return results


def do_train(args, cfg):
    model = build_lazy_model(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = _checkpointer(cfg, model, save_dir=cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            (
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
                if comm.is_main_process()
                else None
            ),
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            (
                hooks.PeriodicWriter(
                    default_writers(cfg.train.output_dir, cfg.train.max_iter),
                    period=cfg.train.log_period,
                )
                if comm.is_main_process()
                else None
            ),
        ]
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = load_lazy_config(args.config_file, args.opts)
    check_datasets(cfg, args.eval_only)
    default_setup(cfg, args)
    sn_process_setup(cfg.train.output_dir, cfg.train.device)  # sn_det's logger, CPU threads
    if args.eval_only:
        model = build_lazy_model(cfg.model)
        model.to(cfg.train.device)
        model = create_ddp_model(model)
        _checkpointer(cfg, model).load(cfg.train.init_checkpoint)
        return do_test(cfg, model)
    do_train(args, cfg)
    return None


def _main_or_exit(args, launcher_pid=None):
    if launcher_pid is not None:
        exit_with_parent(launcher_pid)  # no orphans training on when the launcher is killed
    try:
        return main(args)
    except (LazyConfigError, CheckpointConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def invoke_main() -> None:
    args = default_argument_parser(epilog=__doc__.split("Examples:")[1]).parse_args()
    try:  # config errors before any worker starts: one sentence, exit 2
        cfg = load_lazy_config(args.config_file, args.opts)
        check_train_settings(cfg, args.resume)
        check_datasets(cfg, args.eval_only)
    except LazyConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    launch(
        _main_or_exit,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args, os.getpid()),
    )


if __name__ == "__main__":
    invoke_main()
