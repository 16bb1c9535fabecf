"""Worker processes that end with their launcher.

detectron2's ``launch`` starts one process per GPU with torch.multiprocessing and waits for
them. When the launcher is killed (kill -9, an OOM kill, a scheduler's preemption), nothing
tells the workers: they went on training as orphans, holding GPUs and writing checkpoints.
:func:`exit_with_parent` is called first thing in each worker.
"""

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time

__all__ = ["exit_with_parent"]

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def _set_parent_death_signal(sig: int) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent exits."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent_pid:  # re-parented: the launcher is gone
            os._exit(1)


def exit_with_parent(parent_pid: int, *, use_prctl: bool = True, interval: float = 1.0) -> str:
    """End this process when the process ``parent_pid`` (its launcher) dies.

    On Linux the kernel kills it at once (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere,
    or if that fails, a daemon thread checks every ``interval`` seconds whether the process
    was re-parented, and exits. Does nothing in the launcher itself (one process: detectron2's
    launch runs the main function in place).

    Args:
        parent_pid: the launcher's pid, taken in the launcher before it starts workers.
        use_prctl: False forces the portable watch (for tests).
        interval: seconds between the watch thread's checks.

    Returns:
        "none" (this is the launcher), "prctl" or "thread": how the process is tied.
    """
    if os.getpid() == parent_pid:
        return "none"
    how = "prctl" if use_prctl and _set_parent_death_signal(signal.SIGKILL) else "thread"
    if how == "thread":
        threading.Thread(
            target=_watch_parent, args=(parent_pid, interval), name="parent-watch", daemon=True
        ).start()
    # The launcher may have died before the death signal was armed.
    if os.getppid() != parent_pid:
        logging.getLogger(__name__).error("The launcher has exited; stopping this worker.")
        os._exit(1)
    return how
