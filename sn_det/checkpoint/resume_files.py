"""Which checkpoint of a training folder to resume from, when its bookkeeping is damaged.

detectron2's Checkpointer writes ``model_XXXXXXX.pth`` (``model_final.pth`` last), then
rewrites ``last_checkpoint`` with that name; ``--resume`` loads whatever the tag names. A
kill during the rewrite leaves the tag empty, a kill or a full disk during a save leaves a
truncated file, and either ended in a traceback. Here the tag is written atomically, and a
missing, empty or broken tag, or a tagged file that is not complete, falls back to the newest
complete checkpoint of the folder.
"""

import math
import os
import re
import zipfile
from typing import List

from ..atomic_files import new_temp_file

__all__ = [
    "CHECKPOINT_NAME",
    "checkpoint_order",
    "complete_checkpoints",
    "is_complete_checkpoint",
    "write_text_atomically",
]

# The files a training run writes: model_<iteration, 7 digits>.pth and model_final.pth.
CHECKPOINT_NAME = re.compile(r"model_(\d+|final)\.pth")
_ZIP_MAGIC = b"PK\x03\x04"


def checkpoint_order(name: str) -> float:
    """Iteration order of a checkpoint file name (a basename); model_final comes last."""
    number = CHECKPOINT_NAME.fullmatch(name).group(1)
    return math.inf if number == "final" else int(number)


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a checkpoint file written to its end.

    torch.save writes a zip archive whose directory comes last, so a file cut short has a
    zip header but no readable directory. Files in torch's legacy (non-zip) format cannot be
    checked this way and count as complete when not empty.
    """
    try:
        if os.path.getsize(path) == 0:
            return False
        with open(path, "rb") as f:
            is_zip = f.read(4) == _ZIP_MAGIC
        if not is_zip:
            return True
        with zipfile.ZipFile(path) as z:
            size = os.path.getsize(path)
            # Every member must start inside the file (a directory from an older, longer
            # write would point past a truncated end).
            return all(info.header_offset < size for info in z.infolist())
    except (OSError, zipfile.BadZipFile):
        return False


def complete_checkpoints(folder: str) -> List[str]:
    """The complete checkpoint files (basenames) of a training folder, oldest first."""
    try:
        names = [n for n in os.listdir(folder) if CHECKPOINT_NAME.fullmatch(n)]
    except FileNotFoundError:
        return []
    names = [n for n in names if is_complete_checkpoint(os.path.join(folder, n))]
    return sorted(names, key=checkpoint_order)


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then rename it over ``path``:
    a reader (or a kill) never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = new_temp_file(folder)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
