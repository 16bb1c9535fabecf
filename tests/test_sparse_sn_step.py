"""benchmarks/sparse_sn_step.py at a toy size in this process: its three rows and its
refusals (timings are not checked: a test cannot time reliably on a shared CPU)."""

import importlib
import os

import pytest

from tool_runner import REPO, call_main, markdown_table, one_sentence_exit_2, script_main

SCRIPT = os.path.join(REPO, "benchmarks", "sparse_sn_step.py")


def test_times_sn_and_both_sparse_sn_implementations():
    import torch

    impl = importlib.import_module("sn_det.projects.sparse_sn.sparsestmax")

    threads = torch.get_num_threads()
    proc = call_main(script_main(SCRIPT), ["--shape", "2x8x3x3", "--rounds", "3", "--steps", "2"])
    assert torch.get_num_threads() == threads and impl.HOST_ON_CPU  # both restored
    _, rows = markdown_table(proc.stdout, "layer step")
    assert [r[0] for r in rows] == [
        "SN",
        "Sparse SN, sparsestmax on the host",
        "Sparse SN, sparsestmax in torch ops",
    ]
    assert all(float(r[1]) > 0 for r in rows) and float(rows[0][2]) == 1.0


@pytest.mark.parametrize(
    "args,expected",
    [(["--shape", "2x8x3"], "give NxCxHxW"), (["--rounds", "1"], "at least 3")],
)
def test_bad_input_is_one_sentence(args, expected):
    proc = call_main(script_main(SCRIPT), args)
    one_sentence_exit_2(proc.returncode, proc.stdout + proc.stderr, expected)
