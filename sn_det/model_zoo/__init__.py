"""sn_det's shipped recipes, the counterpart of ``detectron2.model_zoo``.

Config paths are relative to the repository's ``configs/`` folder, which is installed with
the package (as ``sn_det/model_zoo/configs``, see setup.py), e.g.
``get_config("sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml")``; the projects' recipes are
``projects/<Folder>/configs/...`` (e.g. ``projects/SparseSN/configs/...``). ``_BASE_`` chains
between shipped configs resolve there, from an installed package as from a checkout.
"""

import os

from detectron2.config import CfgNode

__all__ = ["get_config_file", "get_config", "list_configs", "ConfigNotFoundError"]

_HERE = os.path.dirname(os.path.abspath(__file__))
# A source checkout whose setup.py has not run yet (no symlinks): the repository's folders.
_CHECKOUT = os.path.normpath(os.path.join(_HERE, "..", ".."))


class ConfigNotFoundError(FileNotFoundError):
    """A config path that sn_det does not ship; the message is one sentence."""


def _folder(name: str) -> str:
    """The installed ``configs``/``projects`` folder, or the checkout's."""
    packaged = os.path.join(_HERE, name)
    return packaged if os.path.isdir(packaged) else os.path.join(_CHECKOUT, name)


def _path(config_path: str) -> str:
    if config_path.startswith("projects/"):
        return os.path.join(_folder("projects"), config_path[len("projects/") :])
    return os.path.join(_folder("configs"), config_path)


def _yamls(root: str):
    """The configs below ``root``: yacs ``.yaml`` and LazyConfig ``.py`` files."""
    for folder, _, files in os.walk(root, followlinks=True):
        for f in files:
            if f.endswith((".yaml", ".py")) and "__pycache__" not in folder:
                yield os.path.relpath(os.path.join(folder, f), root)


def list_configs():
    """Every shipped config, as the relative paths :func:`get_config_file` takes."""
    found = list(_yamls(_folder("configs")))
    projects = _folder("projects")
    for project in sorted(os.listdir(projects)) if os.path.isdir(projects) else ():
        found += [
            f"projects/{project}/configs/{p}"
            for p in _yamls(os.path.join(projects, project, "configs"))
        ]
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """The real path of a shipped config.

    Args:
        config_path: relative to sn_det's ``configs/``, e.g.
            ``"sn_baselines/mask_rcnn_R_50_FPN_2x_sn_8x1.yaml"``, or a project's
            ``"projects/SparseSN/configs/..."``.

    Raises:
        ConfigNotFoundError: sn_det ships no such config (the message names it).
    """
    path = _path(config_path)
    if not config_path.endswith((".yaml", ".py")) or not os.path.isfile(path):
        raise ConfigNotFoundError(
            f"sn_det ships no config {config_path!r} (sn_det.model_zoo.list_configs() lists "
            f"the {len(list_configs())} it has)"
        )
    return path


def get_config(config_path: str, config_adders=()):
    """A shipped config: for ``.yaml``, detectron2's config with sn_det's keys merged from it
    (a CfgNode, not frozen); for ``.py``, the LazyConfig with its SN norm names resolved
    (``sn_det.lazy.resolve_lazy_norms``).

    Args:
        config_adders: functions adding a project's keys, for a project's yaml config (e.g.
            ``sn_det.projects.sparse_sn.add_sparse_sn_config``).
    """
    from ..config import get_sn_cfg

    if config_path.endswith(".py"):
        from detectron2.config import LazyConfig

        from ..lazy import resolve_lazy_norms

        cfg = LazyConfig.load(get_config_file(config_path))
        resolve_lazy_norms(cfg)
        return cfg

    cfg = get_sn_cfg(config_adders)
    cfg.merge_from_file(get_config_file(config_path))
    return cfg
