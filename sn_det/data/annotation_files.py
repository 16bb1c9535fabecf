"""Annotation files that cannot be read, named in one sentence.

detectron2's loaders read a dataset's json with ``json.load`` and let the error out as it
is: a truncated or hand-edited ``instances_train2017.json`` ends training with
``json.decoder.JSONDecodeError: Expecting ',' delimiter: line 1 column 52 (char 51)``,
naming neither the file nor the dataset. Here:

- :func:`check_annotation_files` parses a dataset's annotation files up front (used for test
  sets, which detectron2 reads only after training);
- :func:`annotation_files_named` turns such an error raised while a dataset is being
  loaded into a :class:`DatasetFileError` naming the file (used around the training loader,
  whose files are too large to parse twice), and so detectron2's assertion that a loaded
  json's categories differ from the ones registered under the dataset's name.
"""

import contextlib
import json
import re
from typing import Iterable, Optional, Tuple

from detectron2.data import MetadataCatalog

from .mapper import DatasetFileError

__all__ = ["ANNOTATION_ATTRS", "check_annotation_files", "annotation_files_named"]

# Metadata attributes naming a dataset's json annotation files.
ANNOTATION_ATTRS = ("json_file", "panoptic_json")

# detectron2's Metadata.__setattr__ assertion when a loader sets a value that differs from
# the registered one (load_coco_json sets thing_classes from the json's categories).
_METADATA_CONFLICT = re.compile(
    r"Attribute '(\w+)' in the metadata of '([^']+)' cannot be set to a different value"
)


_RESTORE = "restore the file (for COCO, download it again) or point the dataset at a good copy"


def _json_problem(path: str, thing_classes=None) -> Optional[Tuple[str, str]]:
    """Why ``path`` is not a COCO-style json object (or, given the dataset's registered
    ``thing_classes``, one whose categories are others), and the fix; None when it is one."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except UnicodeDecodeError as e:
        return f"not UTF-8 text: {e.reason} at byte {e.start}", _RESTORE
    except ValueError as e:  # json.JSONDecodeError
        return f"not valid JSON: {e}", _RESTORE
    if not isinstance(data, dict) or "images" not in data:
        return (
            f"valid JSON but not COCO annotations (a {type(data).__name__} without 'images')",
            _RESTORE,
        )
    categories = data.get("categories")
    if thing_classes is not None and isinstance(categories, list):
        # What detectron2's load_coco_json will set as thing_classes (and assert equal).
        try:
            names = [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
        except (KeyError, TypeError):
            return "valid JSON but not COCO annotations (categories without id and name)", _RESTORE
        if names != list(thing_classes):
            return (
                f"of other categories ({len(names)}, e.g. {names[:3]}) than the "
                f"{len(thing_classes)} registered under the dataset's name (e.g. "
                f"{list(thing_classes)[:3]})",
                "register such data under a name of its own (detectron2's "
                "register_coco_instances)",
            )
    return None


def _first_problem(names: Iterable[str]) -> Optional[Tuple[str, str, str, str, str]]:
    """(dataset, attribute, path, problem, fix) of the first unreadable annotation file."""
    for name in names:
        meta = MetadataCatalog.get(name)
        for attr in ANNOTATION_ATTRS:
            path = meta.get(attr, None)
            if not path:
                continue
            # Only the instance json's categories become thing_classes (COCO's loader).
            classes = meta.get("thing_classes", None) if attr == "json_file" else None
            if meta.get("evaluator_type", None) != "coco":
                classes = None
            try:
                problem = _json_problem(path, classes)
            except OSError:  # missing files are prepare_datasets' sentence
                continue
            if problem:
                return (name, attr, path) + problem
    return None


def _error(problem: Tuple[str, str, str, str, str]) -> DatasetFileError:
    name, attr, path, reason, fix = problem
    return DatasetFileError(f"{path}, the {attr} of dataset {name!r}, is {reason}; {fix}")


def check_annotation_files(names: Iterable[str]) -> None:
    """Parse the json annotation files of the datasets ``names``.

    Raises:
        DatasetFileError: the first file that is not valid json with an ``images`` list,
            or (a ``coco`` dataset with registered ``thing_classes``, e.g. detectron2's
            builtin ``coco_2017_val``) whose categories are others.
    """
    problem = _first_problem(names)
    if problem:
        raise _error(problem)


@contextlib.contextmanager
def annotation_files_named(names: Iterable[str]):
    """Within the block, an error from reading one of ``names``' json annotation files
    becomes a :class:`DatasetFileError` naming it. Errors that no annotation file explains
    pass through unchanged; the files are parsed again only after such an error."""
    names = list(names)
    try:
        yield
    except AssertionError as e:  # detectron2's Metadata refuses to change a registered value
        conflict = _METADATA_CONFLICT.match(str(e))
        if conflict is None or conflict.group(2) not in names:
            raise
        attr, name = conflict.groups()
        files = [MetadataCatalog.get(name).get(a, None) for a in ANNOTATION_ATTRS]
        where = " or ".join(f for f in files if f) or "its annotation files"
        raise DatasetFileError(
            f"dataset {name!r} is registered with other {attr} than {where} holds (e.g. a "
            "builtin COCO name over data with other categories); register your data under a "
            "name of its own (detectron2's register_coco_instances)"
        ) from None
    except (ValueError, KeyError, TypeError):
        problem = _first_problem(names)
        if problem is None:
            raise
        raise _error(problem) from None
