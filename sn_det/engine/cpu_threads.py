"""CPU threads per process when several training processes share one machine's CPU.

torch gives every process as many intra-op threads as the machine has cores. With
``--num-gpus N`` on a CPU-only machine (gloo), N processes then run N times too many threads
and spend their time preempting each other: on the 2-core CPU, 2 processes of the instant
Mask R-CNN trained at 1.5 s/iteration and evaluated at 0.71 s/image with 2 threads each,
and at 0.61 s and 0.27 s with 1 thread each.
"""

import logging
import os
from typing import Optional

import torch
from detectron2.utils import comm

__all__ = ["share_cpu_threads"]

logger = logging.getLogger(__name__)

# Set by the user: their choice stands.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_shared: Optional[int] = None  # what this process was given


def _processes_on_this_machine() -> int:
    """The job's processes on this machine: detectron2's per-machine group when its launch
    made one, else torchrun's LOCAL_WORLD_SIZE (a user's own process group has neither)."""
    if comm.get_world_size() <= 1:
        return 1
    if comm._LOCAL_PROCESS_GROUP is not None:
        return comm.get_local_size()
    try:
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:  # not torchrun's: nothing known about this machine
        return 1


def share_cpu_threads(device: str) -> Optional[int]:
    """Give this process its share of torch's threads when it trains on the CPU beside
    other processes of the same job on this machine.

    Args:
        device: the model's device (``MODEL.DEVICE``, ``train.device``).

    Returns:
        the threads this process now has, or None when it was left alone (one process
        on this machine, a GPU, or a thread count set through the environment).
    """
    global _shared
    if torch.device(device).type != "cpu":
        return None
    local = _processes_on_this_machine()
    if local <= 1 or any(os.environ.get(v) for v in THREAD_VARIABLES):
        return None
    if _shared is not None:  # once per process: a second call must not divide again
        return _shared
    total = torch.get_num_threads()  # torch's default: the machine's cores
    _shared = max(1, total // local)
    torch.set_num_threads(_shared)
    logger.info(
        f"{local} training processes share this machine's {total} CPU threads: "
        f"{_shared} each (set OMP_NUM_THREADS or MKL_NUM_THREADS to choose)"
    )
    return _shared
