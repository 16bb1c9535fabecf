"""Temporary files that become real outputs by a rename: readers (and a kill) see the old
file or the whole new one, never a part, and the result has the permissions any new file
of this process gets.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and a rename keeps
that mode: converted weights in a shared ``pretrained/`` folder would be unreadable to
everyone else. :func:`new_temp_file` gives the file the mode ``open()`` would (0666 less
the umask) before anything is written.
"""

import os
import tempfile
from typing import Tuple

__all__ = ["new_temp_file"]


def _read_umask() -> int:
    # os.umask can only be read by setting it; done once, at import (before worker threads
    # exist), so that no file another thread creates meanwhile gets the wrong mode.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def new_temp_file(folder: str, suffix: str = "") -> Tuple[int, str]:
    """A new hidden temporary file in ``folder`` (to be renamed over the output there):
    (open file descriptor, path), mode 0666 less the process's umask."""
    fd, path = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, path
