"""Dataset mapping that names the file when the data is bad.

detectron2's ``DatasetMapper`` reads each image with PIL and turns polygons into masks. On a
damaged image PIL says "image file is truncated" without the file's name, and an annotation
whose ``"segmentation"`` is empty (``[]``, kept by ``load_coco_json`` as an instance without
a mask) makes the mask code fail with a KeyError deep inside. :class:`CheckedMapper` wraps any
mapper so that

- an image that cannot be read is a :class:`DatasetFileError` naming the file (the training
  tool prints it as one sentence and exits 2);
- with masks on, an instance without a segmentation is skipped, with one warning naming the
  image file and the annotation (a backstop for mappers used on their own).

The training loader checks the whole dataset first (:func:`check_segmentations`): with masks
on, an instance without a segmentation refuses training before the first step, in one
sentence naming the image file and the annotation, since a mask model cannot learn from it
and skipping would silently train on fewer instances than the dataset claims. With masks
off, segmentations are not read at all, as in detectron2.
"""

import logging
from typing import Callable, List

__all__ = [
    "DatasetFileError",
    "CheckedMapper",
    "check_segmentations",
    "instances_without_segmentation",
]

logger = logging.getLogger(__name__)


class DatasetFileError(Exception):
    """A dataset file that cannot be used; the message is one sentence naming it.

    Raised in a DataLoader worker, it reaches the main process re-created from the worker's
    formatted traceback (``torch.utils.data`` does ``type(e)(traceback_text)``); the sentence
    is then recovered from that text's last line, so the user still sees one sentence.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


def instances_without_segmentation(annotations: List[dict]) -> List[int]:
    """Indices of the non-crowd annotations that have no usable segmentation (missing, or an
    empty list or dict)."""
    return [
        i
        for i, a in enumerate(annotations)
        if not a.get("iscrowd", 0) and not a.get("segmentation")
    ]


def _annotation_names(annotations: List[dict], indices: List[int]) -> str:
    # detectron2's COCO loader drops annotation ids: then the position in the image's list.
    return ", ".join(
        (
            f"id {annotations[i]['id']}"
            if "id" in annotations[i]
            else f"#{i} (from 0) of the image's {len(annotations)}"
        )
        for i in indices
    )


def check_segmentations(dataset_dicts: List[dict]) -> None:
    """Refuse a mask-model dataset that has instances without a segmentation.

    Args:
        dataset_dicts: detectron2's dataset dicts (``file_name``, ``annotations``).

    Raises:
        DatasetFileError: one sentence naming the first image file and its annotations, and
            how many instances of the dataset are affected.
    """
    first, total = None, 0
    for d in dataset_dicts:
        bad = instances_without_segmentation(d.get("annotations") or [])
        if bad:
            total += len(bad)
            if first is None:
                first = (d.get("file_name", "?"), _annotation_names(d["annotations"], bad))
    if first is not None:
        raise DatasetFileError(
            f"{first[0]} has an instance without a segmentation (annotation {first[1]}; "
            f"{total} such instance(s) in the training set): a mask model needs a polygon or "
            "RLE for every instance, so fix or remove them, or set MODEL.MASK_ON False"
        )


class CheckedMapper:
    """Wrap a dataset mapper (``DatasetMapper(cfg, is_train)`` or a project's) so that bad
    input names its file (see the module doc).

    Args:
        mapper: callable dataset dict -> model input dict.
        mask_on: whether the model reads instance masks (``MODEL.MASK_ON``).
    """

    def __init__(self, mapper: Callable[[dict], dict], mask_on: bool):
        self.mapper = mapper
        self.mask_on = mask_on
        self._warned = set()  # files already reported by this process

    def __call__(self, dataset_dict: dict) -> dict:
        file_name = dataset_dict.get("file_name", "?")
        annotations = dataset_dict.get("annotations")
        if self.mask_on and annotations:
            bad = instances_without_segmentation(annotations)
            if bad:
                dataset_dict = dict(dataset_dict)
                dataset_dict["annotations"] = [
                    a for i, a in enumerate(annotations) if i not in frozenset(bad)
                ]
                if file_name not in self._warned:
                    self._warned.add(file_name)
                    which = _annotation_names(annotations, bad)
                    logger.warning(
                        f"{file_name}: skipping {len(bad)} instance(s) without a segmentation "
                        f"(annotation {which}), as detectron2 skips unusable polygons"
                    )
        try:
            return self.mapper(dataset_dict)
        except (OSError, SyntaxError) as e:  # PIL: truncated, unidentified or broken images
            raise DatasetFileError(
                f"{file_name} is not a readable image ({type(e).__name__}: {e}); replace or "
                "remove it from the dataset"
            ) from None
