"""benchmarks/triton_host_time.py: SN's Triton host path with no-op kernels, timed against
GroupNorm and (A/B) another copy of switch_norm_triton.py. Runs in this process at a toy
size; timings are not checked (a test cannot time reliably on a shared CPU)."""

import os

import pytest

from tool_runner import REPO, call_main, markdown_table, one_sentence_exit_2, script_main

pytest.importorskip("triton")
SCRIPT = os.path.join(REPO, "benchmarks", "triton_host_time.py")
CURRENT = os.path.join(REPO, "sn_det", "layers", "switch_norm_triton.py")


def test_times_both_copies_and_the_baseline():
    import torch

    threads = torch.get_num_threads()
    argv = ["--shape", "2x32x4x4", "--rounds", "3", "--steps", "2", "--against", CURRENT]
    proc = call_main(script_main(SCRIPT), argv)
    assert torch.get_num_threads() == threads  # restored for the rest of this process
    _, rows = markdown_table(proc.stdout, "step")
    assert [r[0] for r in rows] == [
        "SN (this checkout), kernels stubbed",
        "SN (--against), kernels stubbed",
        "GroupNorm(32), whole step",
    ]
    assert all(float(r[1]) > 0 for r in rows) and float(rows[2][2]) == 1.0
    assert proc.stdout.splitlines()[-1].startswith("this checkout / --against: ")


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--shape", "2x30x4x4"], "multiple of 32"),
        (["--shape", "2x32x4"], "give NxCxHxW"),
        (["--rounds", "2"], "at least 3"),
        (["--against", "/nonexistent/snt.py"], "no such file"),
        (["--against", SCRIPT], "does not load as switch_norm_triton.py"),
        (["--device", "gpu0"], "is not a device"),
        (["--device", "meta"], "runs on cpu or cuda"),
    ],
)
def test_bad_input_is_one_sentence(args, expected):
    proc = call_main(
        script_main(SCRIPT), [*args, "--rounds", "3"] if "--rounds" not in args else args
    )
    one_sentence_exit_2(proc.returncode, proc.stdout + proc.stderr, expected)
