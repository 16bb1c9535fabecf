"""From command-line arguments to a checked, frozen config."""

import os
from typing import Optional


import torch
import yaml
from detectron2.config import CfgNode
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import get_sn_cfg
from ..data import DatasetFileError, prepare_datasets
from ..modeling import check_norm_config
from ..projects import CONFIG_ADDERS, config_adders, project_of
from .cpu_threads import share_cpu_threads

__all__ = [
    "setup_cfg",
    "load_cfg",
    "default_sn_setup",
    "sn_process_setup",
    "ConfigError",
    "add_project_argument",
    "project_config_adders",
    "selected_project",
]


class ConfigError(Exception):
    """A config that cannot run as written; the message is one sentence for the user."""


def add_project_argument(parser) -> None:
    """``--project``: for tools that read any config, the project whose config keys it
    needs (default: the project folder the config file lies in, if any)."""
    parser.add_argument(
        "--project",
        choices=sorted(CONFIG_ADDERS),
        help="the project whose config keys the config uses (default: the projects/<Folder> "
        "the config file lies in; needed for a run's config.yaml of a project model)",
    )


def selected_project(args) -> Optional[str]:
    """``args.project``, else the project folder holding ``args.config_file``; None for
    neither."""
    return getattr(args, "project", None) or project_of(args.config_file)


def project_config_adders(args) -> tuple:
    """The config adders of :func:`selected_project`; () for none."""
    return config_adders(selected_project(args))


def _check_weights(cfg, resume: bool) -> None:
    """A local MODEL.WEIGHTS file that does not exist is an error up front (detectron2 would
    assert deep inside the checkpointer), unless --resume will load OUTPUT_DIR's checkpoint."""
    weights = cfg.MODEL.WEIGHTS
    if not weights or "://" in weights or os.path.exists(weights):
        return
    if resume and os.path.exists(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")):
        return
    raise ConfigError(
        f"MODEL.WEIGHTS = {weights!r} does not exist; for the sn_baselines recipes convert the "
        "published ImageNet SN model there (tools/convert_sn_to_d2.py, see the README) or point "
        "MODEL.WEIGHTS at it, or set MODEL.WEIGHTS '' to train from scratch"
    )


def _check_batch_average(cfg) -> None:
    """Batch-average mode only accumulates sums while training; without the pass that turns
    them into statistics (TEST.SN_BATCH_AVG), evaluation would normalise with raw sums."""
    sn = cfg.MODEL.SN
    if not sn.USING_MOVING_AVERAGE and sn.USING_BN and not cfg.TEST.SN_BATCH_AVG.ENABLED:
        raise ConfigError(
            "MODEL.SN.USING_MOVING_AVERAGE False accumulates running sums that only the "
            "batch-average pass finalises, and TEST.SN_BATCH_AVG.ENABLED is False, so "
            "evaluation would use unfinished statistics; add TEST.SN_BATCH_AVG.ENABLED True "
            "(or set MODEL.SN.USING_MOVING_AVERAGE True)"
        )


def _check_ranges(cfg) -> None:
    """Values that only fail deep inside model building or evaluation, checked up front."""
    sn = cfg.MODEL.SN
    if not 0.0 <= sn.MOMENTUM <= 1.0:
        raise ConfigError(
            f"MODEL.SN.MOMENTUM = {sn.MOMENTUM} is not in [0, 1]; it is the weight of the old "
            "running value (the SN papers' convention: 0.997; PyTorch BN's 0.1 is 0.9 here)"
        )
    if not sn.EPS > 0:
        raise ConfigError(f"MODEL.SN.EPS = {sn.EPS} must be > 0 (it is added to the variance)")
    if cfg.TEST.SN_BATCH_AVG.ENABLED and cfg.TEST.SN_BATCH_AVG.NUM_ITER < 1:
        raise ConfigError(
            f"TEST.SN_BATCH_AVG.NUM_ITER = {cfg.TEST.SN_BATCH_AVG.NUM_ITER}: batch averaging "
            "needs at least one batch"
        )
    if not 0.0 <= cfg.MODEL.MIN_LOADED_FRACTION <= 1.0:
        raise ConfigError(
            f"MODEL.MIN_LOADED_FRACTION = {cfg.MODEL.MIN_LOADED_FRACTION} is not a fraction in "
            "[0, 1] (the share of the model's weights a checkpoint must fill)"
        )


def _check_batch_size(cfg, args) -> None:
    """detectron2 splits SOLVER.IMS_PER_BATCH evenly over the processes (and asserts so deep
    inside its data loader). Evaluation alone reads no training batches, unless it
    batch-averages SN statistics."""
    if getattr(args, "eval_only", False) and not cfg.TEST.SN_BATCH_AVG.ENABLED:
        return
    world = getattr(args, "num_gpus", 1) * getattr(args, "num_machines", 1)
    if world > 1 and cfg.SOLVER.IMS_PER_BATCH % world:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {cfg.SOLVER.IMS_PER_BATCH} does not divide evenly over "
            f"{world} processes (--num-gpus x --num-machines); make it a multiple of {world}"
        )


def _project_hint(config_file: str, given=()) -> str:
    """For a config with keys sn_det lacks: the project whose keys make it read (a run's
    config.yaml lies in OUTPUT_DIR, not under projects/, so the project is not found from
    its folder); "" if none does."""
    for project in CONFIG_ADDERS:
        try:
            (adder,) = config_adders(project)
            if adder in given:
                continue
            get_sn_cfg(tuple(given) + (adder,)).merge_from_file(config_file)
        except Exception:  # not this project's config (or the project cannot load here)
            continue
        return (
            f" (it is a config of the {project} project, whose keys train_net, eval_continuous "
            f"and visualize_sn read with --project {project})"
        )
    return ""


def load_cfg(config_file: str, opts=(), config_adders=()) -> CfgNode:
    """get_cfg + sn_det's keys + the file + ``KEY VALUE`` opts, not frozen and not checked
    beyond parsing (for tools that only build a model, e.g. tools/visualize_sn.py).

    Args:
        config_adders: functions ``cfg -> cfg`` adding a project's keys (e.g. Sparse SN's
            ``add_sparse_sn_config``), applied after sn_det's.

    Raises:
        ConfigError: a missing or unreadable file, a key typo or a wrongly typed value.
    """
    cfg = get_sn_cfg(config_adders)
    if config_file.endswith(".py") and os.path.isfile(config_file):
        raise ConfigError(
            f"{config_file} is a Python (LazyConfig) config; train it with "
            "tools/lazyconfig_train_net.py (this tool reads yaml configs)"
        )
    try:
        cfg.merge_from_file(config_file)
    except (FileNotFoundError, AssertionError) as e:  # detectron2 asserts the file exists
        raise ConfigError(f"cannot read the config file: {e}") from None
    except yaml.YAMLError as e:  # its message spans lines: where, and what was expected
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        # The mark names the file that failed: the config itself or one of its _BASE_s.
        name = getattr(where, "name", None) or config_file
        name = config_file if name.startswith("<") else name
        what = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"{name} is not valid YAML{at}: {what}") from None
    except (TypeError, AttributeError):  # yacs on an empty file, a list or a scalar
        raise ConfigError(
            f"{config_file} (or a _BASE_ of it) is not a detectron2 config: a yaml file of "
            "keys and values (MODEL: ..., SOLVER: ...) is expected"
        ) from None
    except (KeyError, ValueError) as e:  # yacs: "Non-existent config key: MODEL.FOO", types
        message = str(e.args[0] if e.args else e)
        if message.startswith("Non-existent config key"):
            message += _project_hint(config_file, config_adders)
        raise ConfigError(f"{config_file}: {message}") from None
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:  # key typos, types, odd-length opts
        raise ConfigError(f"command-line opts: {e.args[0] if e.args else e}") from None
    return cfg


def setup_cfg(args, default=True, config_adders=()):
    """get_cfg + MODEL.SN keys + the file + the trailing KEY VALUE opts, checked and frozen.

    Args:
        args: parsed ``default_argument_parser()`` arguments.
        default: also run detectron2's ``default_setup`` (logging, output dir, seeds).
        config_adders: see :func:`load_cfg`.

    Raises:
        ConfigError: a missing or unreadable config file, a key typo, an unknown norm or
            dataset, a missing dataset path or evaluator module, a test set's unreadable
            annotation file, a CUDA device on a machine without one, an SN value out of
            range, SN batch-average mode without the averaging pass, or a batch that does
            not divide over the processes.
    """
    cfg = load_cfg(args.config_file, args.opts, config_adders)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA GPU is available; "
            "add 'MODEL.DEVICE cpu' to the command line"
        )
    _check_weights(cfg, resume=getattr(args, "resume", False))
    _check_ranges(cfg)
    _check_batch_average(cfg)
    _check_batch_size(cfg, args)
    # Evaluation alone reads no training data, except to recompute batch-average statistics.
    train = not getattr(args, "eval_only", False) or cfg.TEST.SN_BATCH_AVG.ENABLED
    try:
        check_norm_config(cfg)
        prepare_datasets(cfg, train=train)
    except (ValueError, KeyError, FileNotFoundError, ImportError, DatasetFileError) as e:
        raise ConfigError(str(e.args[0] if e.args else e)) from None
    cfg.freeze()
    if default:
        default_sn_setup(cfg, args)
    return cfg


def default_sn_setup(cfg: CfgNode, args) -> None:
    """detectron2's ``default_setup`` (output dir, config dump, logging, seed) plus sn_det's
    logger, whose progress messages (batch averaging, checkpoint conversion) then go to the
    same console and log file; several processes training on one machine's CPU share its
    threads (:func:`share_cpu_threads`)."""
    default_setup(cfg, args)
    sn_process_setup(cfg.OUTPUT_DIR, cfg.MODEL.DEVICE)


def sn_process_setup(output_dir: str, device: str) -> None:
    """What every sn_det training or evaluation process adds to detectron2's
    ``default_setup``, for yacs (``OUTPUT_DIR``, ``MODEL.DEVICE``) and LazyConfig
    (``train.output_dir``, ``train.device``) runs alike: sn_det's logger on the same console
    and log file, and the CPU threads shared by the processes of one machine."""
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="sn_det", abbrev_name="sn")
    share_cpu_threads(device)
