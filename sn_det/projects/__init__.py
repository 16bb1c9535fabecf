"""The research projects under the repository's ``projects/`` folder, importable as
``sn_det.projects.<name>`` (as detectron2 exposes its own projects).

sn_det itself never imports a project, except on request: :func:`config_adders` imports
the one a tool is asked to read a config of. An installed wheel carries them as real subpackages
(setup.py maps them); in a source checkout installed in place, where setuptools cannot map
them, the finder below resolves ``sn_det.projects.<name>`` to ``projects/<Folder>/<name>``.
"""

import importlib
import importlib.abc
import importlib.util
import os
import sys
from pathlib import Path

__all__ = ["CONFIG_ADDERS", "TRAINERS", "project_of", "config_adders", "project_trainer"]

# package name -> folder under projects/
PROJECTS = {"sparse_sn": "SparseSN", "sn_segmentation": "SNSegmentation", "norm_study": "NormStudy"}

_ROOT = Path(__file__).resolve().parent.parent.parent / "projects"


class _CheckoutProjectsFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        prefix = __name__ + "."
        if not name.startswith(prefix) or name.count(".") != 2:
            return None
        package = name[len(prefix) :]
        folder = PROJECTS.get(package)
        init = _ROOT / str(folder) / package / "__init__.py"
        if folder is None or not init.is_file():
            return None
        return importlib.util.spec_from_file_location(
            name, init, submodule_search_locations=[str(init.parent)]
        )


if _ROOT.is_dir():
    sys.meta_path.append(_CheckoutProjectsFinder())


# Project folder -> the function adding its config keys ("module:function"). Importing it
# also registers the project's norms, heads and meta-architectures. For the tools that read
# any config (visualize_sn, eval_continuous), through --project or from the config's path.
CONFIG_ADDERS = {
    "SparseSN": "sn_det.projects.sparse_sn:add_sparse_sn_config",
    "SNSegmentation": "sn_det.projects.sn_segmentation:add_deeplab_config",
    "SNPointRend": "detectron2.projects.point_rend:add_pointrend_config",
}


# Project folder -> its Trainer subclass ("module:class"); sn_det's Trainer where absent.
TRAINERS = {
    "SparseSN": "sn_det.projects.sparse_sn:SSNTrainer",
    "SNSegmentation": "sn_det.projects.sn_segmentation:SNSegTrainer",
}


def _load(spec: str):
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def project_of(config_file: str):
    """The project folder a config file lies in (``.../projects/<Folder>/...``), if it is
    one of :data:`CONFIG_ADDERS`; else None."""
    parts = Path(os.path.abspath(config_file)).parts
    for i, part in enumerate(parts[:-1]):
        if part == "projects" and parts[i + 1] in CONFIG_ADDERS:
            return parts[i + 1]
    return None


def config_adders(project):
    """``(add_config,)`` of a project folder named in :data:`CONFIG_ADDERS`, ``()`` for None.

    Raises:
        ValueError: an unknown project, in one sentence listing the known ones.
    """
    if project is None:
        return ()
    if project not in CONFIG_ADDERS:
        raise ValueError(
            f"unknown project {project!r}; projects with config keys: {', '.join(CONFIG_ADDERS)}"
        )
    return (_load(CONFIG_ADDERS[project]),)


def project_trainer(project):
    """The Trainer class of a project folder (its own, or sn_det's); sn_det's for None."""
    config_adders(project)  # the same check of the name
    if project in TRAINERS:
        return _load(TRAINERS[project])
    from sn_det.engine import Trainer  # not at import: sn_det.engine imports this module

    return Trainer
