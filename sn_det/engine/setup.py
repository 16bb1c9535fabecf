"""From command-line arguments to a checked, frozen config."""

from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_sn_config
from ..data import prepare_datasets
from ..modeling import check_norm_config

__all__ = ["setup_cfg", "ConfigError"]


class ConfigError(Exception):
    """A config that cannot run as written; the message is one sentence for the user."""


def setup_cfg(args, default=True):
    """get_cfg + MODEL.SN keys + the file + the trailing KEY VALUE opts, checked and frozen.

    Args:
        args: parsed ``default_argument_parser()`` arguments.
        default: also run detectron2's ``default_setup`` (logging, output dir, seeds).

    Raises:
        ConfigError: a missing or unreadable config file, a key typo, an unknown norm or
            dataset, or a missing dataset path.
    """
    cfg = get_cfg()
    add_sn_config(cfg)
    try:
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except FileNotFoundError as e:
        raise ConfigError(f"cannot read the config file: {e}") from None
    except KeyError as e:  # yacs: "Non-existent config key: MODEL.FOO"
        raise ConfigError(f"{args.config_file}: {e.args[0] if e.args else e}") from None
    except (ValueError, AssertionError) as e:  # yacs type mismatches, odd-length opts
        raise ConfigError(f"{args.config_file}: {e}") from None
    try:
        check_norm_config(cfg)
        prepare_datasets(cfg)
    except (ValueError, KeyError, FileNotFoundError) as e:
        raise ConfigError(str(e.args[0] if e.args else e)) from None
    cfg.freeze()
    if default:
        default_setup(cfg, args)
    return cfg
