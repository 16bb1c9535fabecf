"""The research projects under the repository's ``projects/`` folder, importable as
``sn_det.projects.<name>`` (as detectron2 exposes its own projects).

sn_det itself never imports a project. An installed wheel carries them as real subpackages
(setup.py maps them); in a source checkout installed in place, where setuptools cannot map
them, the finder below resolves ``sn_det.projects.<name>`` to ``projects/<Folder>/<name>``.
"""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__all__ = []

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
