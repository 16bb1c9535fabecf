"""From command-line arguments to a checked, frozen config."""

import os


import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_sn_config
from ..data import prepare_datasets
from ..modeling import check_norm_config

__all__ = ["setup_cfg", "ConfigError"]


class ConfigError(Exception):
    """A config that cannot run as written; the message is one sentence for the user."""


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


def setup_cfg(args, default=True):
    """get_cfg + MODEL.SN keys + the file + the trailing KEY VALUE opts, checked and frozen.

    Args:
        args: parsed ``default_argument_parser()`` arguments.
        default: also run detectron2's ``default_setup`` (logging, output dir, seeds).

    Raises:
        ConfigError: a missing or unreadable config file, a key typo, an unknown norm or
            dataset, a missing dataset path, or a CUDA device on a machine without one.
    """
    cfg = get_cfg()
    add_sn_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
    except (FileNotFoundError, AssertionError) as e:  # detectron2 asserts the file exists
        raise ConfigError(f"cannot read the config file: {e}") from None
    except (KeyError, ValueError) as e:  # yacs: "Non-existent config key: MODEL.FOO", types
        raise ConfigError(f"{args.config_file}: {e.args[0] if e.args else e}") from None
    try:
        cfg.merge_from_list(args.opts)
    except (KeyError, ValueError, AssertionError) as e:  # key typos, types, odd-length opts
        raise ConfigError(f"command-line opts: {e.args[0] if e.args else e}") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no CUDA GPU is available; "
            "add 'MODEL.DEVICE cpu' to the command line"
        )
    _check_weights(cfg, resume=getattr(args, "resume", False))
    try:
        check_norm_config(cfg)
        prepare_datasets(cfg)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ConfigError(str(e.args[0] if e.args else e)) from None
    cfg.freeze()
    if default:
        default_setup(cfg, args)
    return cfg
