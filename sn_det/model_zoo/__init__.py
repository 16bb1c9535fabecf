"""sn_det's shipped recipes, the counterpart of ``detectron2.model_zoo``.

Config paths are relative to the repository's ``configs/`` folder, which is installed with
the package (as ``sn_det/model_zoo/configs``, see setup.py), e.g.
``get_config("sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml")``. ``_BASE_`` chains between
shipped configs resolve there, from an installed package as from a checkout.
"""

import os

from detectron2.config import CfgNode, get_cfg

__all__ = ["get_config_file", "get_config", "list_configs", "ConfigNotFoundError"]

_PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# A source checkout whose setup.py has not run yet (no symlink): the repository's configs/.
_CHECKOUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "configs")


class ConfigNotFoundError(FileNotFoundError):
    """A config path that sn_det does not ship; the message is one sentence."""


def _root() -> str:
    return _PACKAGED if os.path.isdir(_PACKAGED) else os.path.normpath(_CHECKOUT)


def list_configs():
    """Every shipped config, as the relative paths :func:`get_config_file` takes."""
    root = _root()
    found = []
    for folder, _, files in os.walk(root):
        found += [
            os.path.relpath(os.path.join(folder, f), root) for f in files if f.endswith(".yaml")
        ]
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """The real path of a shipped config.

    Args:
        config_path: relative to sn_det's ``configs/``, e.g.
            ``"sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml"``.

    Raises:
        ConfigNotFoundError: sn_det ships no such config (the message names it).
    """
    path = os.path.join(_root(), config_path)
    if not config_path.endswith(".yaml") or not os.path.isfile(path):
        raise ConfigNotFoundError(
            f"sn_det ships no config {config_path!r} (sn_det.model_zoo.list_configs() lists "
            f"the {len(list_configs())} it has)"
        )
    return path


def get_config(config_path: str) -> CfgNode:
    """detectron2's config with sn_det's keys, merged from a shipped config (not frozen)."""
    from ..config import add_sn_config

    cfg = add_sn_config(get_cfg())
    cfg.merge_from_file(get_config_file(config_path))
    return cfg
