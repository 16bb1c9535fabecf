"""benchmarks/sparse_sn_step.py at a toy size in this process: its three rows and its
refusals (timings are not checked: a test cannot time reliably on a shared CPU)."""

import importlib
import os

import pytest

from tool_runner import REPO, one_sentence_exit_2, script_main

SCRIPT = os.path.join(REPO, "benchmarks", "sparse_sn_step.py")


def _main():
    return script_main(SCRIPT)


def test_times_sn_and_both_sparse_sn_implementations(capsys):
    import torch

    impl = importlib.import_module("sn_det.projects.sparse_sn.sparsestmax")

    threads = torch.get_num_threads()
    _main()(["--shape", "2x8x3x3", "--rounds", "3", "--steps", "2"])
    assert torch.get_num_threads() == threads and impl.HOST_ON_CPU  # both restored
    lines = capsys.readouterr().out.splitlines()
    rows = [line.strip("|").split("|") for line in lines if line.startswith("| ")][1:]
    assert [r[0].strip() for r in rows] == [
        "SN",
        "Sparse SN, sparsestmax on the host",
        "Sparse SN, sparsestmax in torch ops",
    ]
    assert all(float(r[1]) > 0 for r in rows) and float(rows[0][2]) == 1.0


@pytest.mark.parametrize(
    "args,expected",
    [(["--shape", "2x8x3"], "give NxCxHxW"), (["--rounds", "1"], "at least 3")],
)
def test_bad_input_is_one_sentence(capsys, args, expected):
    with pytest.raises(SystemExit) as e:
        _main()(args)
    captured = capsys.readouterr()
    one_sentence_exit_2(e.value.code, captured.out + captured.err, expected)
