"""Run a function in N spawned processes joined by a gloo process group, bounded in time.

A hang (a collective one rank skipped) must fail the test, not stall the suite: the process
group has a short timeout, and the parent kills the workers when the deadline passes.
"""

import datetime
import faulthandler
import os
import socket
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, fn, world_size, init_method, out_dir, args, timeout):
    # A hang prints every thread's stack (in the test's captured output) before the parent
    # gives up, so the failure says where it stopped.
    faulthandler.dump_traceback_later(max(timeout - 10, 5), exit=True)
    torch.set_num_threads(1)  # N processes on a 2-core machine
    dist.init_process_group(
        "gloo",
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    result = fn(rank, world_size, *args)
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    # A rank can return from its last collective while its peer is still reading from it;
    # exiting then aborted the peer now and then. Meet first. No destroy_process_group():
    # with gloo it hangs now and then (pytorch/pytorch#75097); process exit frees the group.
    dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_distributed(fn, world_size: int, *args, timeout: float = 120.0):
    """Call ``fn(rank, world_size, *args)`` in ``world_size`` gloo processes.

    ``fn`` must be importable (a module-level function). Returns the list of what each rank
    returned, in rank order. Raises AssertionError when a worker fails or the deadline passes.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(
            _worker,
            args=(fn, world_size, f"tcp://127.0.0.1:{_free_port()}", tmp, args, timeout),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"distributed workers did not finish within {timeout:.0f} s (a hang?)"
                    )
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
        return [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world_size)]
