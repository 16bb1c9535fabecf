"""The process's random number generators as one state: capture, restore, isolate, seed.

Training draws from four generators: Python's ``random``, NumPy's global ``np.random``,
torch's CPU generator and (when present) every CUDA device's. Exact resume needs all four
saved in the checkpoint and restored before the first resumed step; evaluation and
per-sample augmentation run inside :func:`isolated_rng`, so that they leave the training's
generators exactly where they were.

The state is built from lists, ints and tensors only (no NumPy arrays), so a checkpoint that
holds it still loads with ``torch.load(weights_only=True)``.
"""

import contextlib
import random
from typing import Iterator

import numpy as np
import torch

__all__ = ["capture_rng_state", "isolated_rng", "restore_rng_state", "seeded_rng"]


def _cuda_in_use() -> bool:
    # Reading a CUDA state initialises CUDA; a process that never used it has nothing to save.
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capture_rng_state(cuda: bool = True) -> dict:
    """The state of every generator of this process.

    Args:
        cuda: include the CUDA generators (reading them synchronises the devices).

    Returns:
        {"python": random.getstate() as lists, "numpy": (name, keys as a list of 624 ints,
        pos, has_gauss, cached_gaussian), "torch": uint8 tensor, "cuda": list of uint8
        tensors (one per visible device) or None}
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda and _cuda_in_use() else None,
    }


def restore_rng_state(state: dict) -> None:
    """Put every generator back to a state from :func:`capture_rng_state`. CUDA states are
    restored when this process has as many devices as the saved one (else left as seeded)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def isolated_rng(cuda: bool = True) -> Iterator[None]:
    """Run a block without moving the process's generators: they are restored on exit.

    Args:
        cuda: also restore the CUDA generators (False: the block does not use them).
    """
    state = capture_rng_state(cuda)
    try:
        yield
    finally:
        restore_rng_state(state)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block with Python's, NumPy's and torch's CPU generator seeded with ``seed``,
    restoring them afterwards. CUDA generators are not touched (``torch.manual_seed`` would
    reseed them too): data augmentation runs on the CPU."""
    with isolated_rng(cuda=False):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        yield
