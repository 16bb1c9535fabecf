"""tools/benchmark_sn.py at toy sizes on the CPU: every part runs (layers, SN under
torch.compile, the Mask R-CNN R50-FPN step of the GPU benchmark) and the tables say what the
code measured. Timings are not checked (a test cannot time reliably on a shared CPU)."""

import os
import re

import pytest

from tool_runner import TOOLS, markdown_table, one_sentence_exit_2, run_tool

BENCH = os.path.join(TOOLS, "benchmark_sn.py")
# A small R50-FPN configuration: ResNet-18 trunk, few proposals and sampled ROIs.
SMALL_R50 = [
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
]  # fmt: skip


def test_layers_compiled_sn_and_the_r50_step_on_toy_sizes(tmp_path):
    out = tmp_path / "bench.md"
    proc = run_tool(
        BENCH,
        "--shapes", "2x32x6x6", "3x64x5x4",
        "--rounds", "2",
        "--compiled",
        "--model", "r50fpn", "--image-size", "64", "64", "--model-rounds", "1", "--warmup", "0",
        "--r50-opts", *SMALL_R50,
        "--out", str(out),
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    text = out.read_text()
    assert text in proc.stdout and not os.path.exists(str(out) + ".tmp")

    header, rows = markdown_table(text, "shape (N,C,H,W)")
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "compiled SN ms" in columns and "compiled/GN" in columns
    assert [r[0] for r in rows] == ["(2, 32, 6, 6)", "(3, 64, 5, 4)"]
    for row in rows:
        cells = dict(zip(columns, row))
        times = [float(cells[k]) for k in ("SN ms", "GN ms", "BN ms", "compiled SN ms")]
        assert all(t >= 0 for t in times), cells
        # sn_det keeps x and its (N, C) statistics for backward: mean_in, var_in, scale,
        # mean, rstd (N, C), mean_ln, var_ln (N), the two switch weights (3), mean_bn, var_bn
        # (C); the textbook form keeps about three copies of x.
        n, c, h, w = (int(v) for v in cells["shape (N,C,H,W)"].strip("()").split(","))
        state = 5 * n * c + 2 * n + 2 * 3 + 2 * c
        assert cells["SN saved/input"] == f"{1 + state / (n * c * h * w):.2f}", cells
        assert float(cells["textbook saved/input"]) > 2.5, cells

    _, r50 = markdown_table(text, "norm")
    assert [r[0] for r in r50] == ["FrozenBN", "BN", "GN", "SN"]
    by_norm = {r[0]: r for r in r50}
    assert by_norm["GN"][2] == "1.00" and by_norm["FrozenBN"][3] == "1.00"
    assert all(float(r[1]) > 0 for r in r50)
    assert "2 images of 64x64" in text

    # The fixed cost per layer step: every norm timed; device operations are counted on CUDA
    # only, and the per-model estimate (which assumes a GPU paced by the host) is GPU-only too.
    fixed = {r[0]: r for r in _fixed_rows(text)}
    assert list(fixed) == ["SN (sn_det)", "SN textbook", "BatchNorm2d", "GroupNorm(32)"]
    assert fixed["BatchNorm2d"][2] == "1.00" and fixed["GroupNorm(32)"][3] == "1.00"
    assert all(float(r[1]) > 0 and r[4] == "-" for r in fixed.values()), fixed
    assert "from fixed costs" not in text


def _fixed_rows(text):
    """The rows of the fixed-cost table (the one after its "Fixed cost" caption)."""
    return markdown_table(text[text.index("Fixed cost per layer step") :], "norm")[1]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--shapes", "2x32x6"], "is not a shape NxCxHxW"),
        (["--shapes", "2x30x6x6"], "multiple of 32"),
        (["--device", "tpu"], "is not a device"),
        (["--rounds", "0"], "not a positive whole number"),
        (["--model", "r50fpn", "--r50-opts", "MODEL.NO_SUCH_KEY", "1"], "do not apply"),
        (["--model", "r50fpn", "--r50-opts", "MODEL.RESNETS.DEPTH"], "KEY VALUE pairs"),
        (["--model", "r50fpn", "--r50-opts", "MODEL.RESNETS.DEPTH", "7"], "do not apply"),
        (["--warmup", "-1"], "'-1' is not a non-negative whole number"),
    ],
)
def test_bad_input_is_one_sentence_and_writes_nothing(tmp_path, capsys, args, expected):
    # In this process (a tool start costs ~8 s here); the tool itself is run below.
    from sn_det.tools.benchmark_sn import main

    out = tmp_path / "bench.md"
    with pytest.raises(SystemExit) as e:
        main([*args, "--out", str(out)])
    captured = capsys.readouterr()
    one_sentence_exit_2(e.value.code, captured.out + captured.err, expected)
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_run_cut_short_keeps_the_tables_it_finished(tmp_path, monkeypatch):
    # On the GPU machine each check runs under a time limit: the layer and fixed-cost tables
    # must survive a model part that is killed or fails.
    import torch

    from sn_det.tools import benchmark_sn

    threads, cudnn_benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.set_num_threads(1)  # differs from the tool's --threads 2

    def fail(*args, **kwargs):
        raise RuntimeError("the model part failed")

    monkeypatch.setattr(benchmark_sn, "bench_model", fail)
    out = tmp_path / "bench.md"
    with pytest.raises(RuntimeError, match="model part failed"):
        benchmark_sn.main(["--shapes", "2x32x6x6", "--rounds", "1", "--out", str(out)])
    try:
        # The tool's process-wide settings do not outlive it, even when it fails.
        assert torch.get_num_threads() == 1
        assert torch.backends.cudnn.benchmark == cudnn_benchmark
    finally:
        torch.set_num_threads(threads)
    text = out.read_text()
    assert "| (2, 32, 6, 6) |" in text, text
    assert "Fixed cost per layer step" in text and "training step" not in text
    assert os.listdir(tmp_path) == ["bench.md"]


def test_the_fixed_cost_table_and_its_model_estimate():
    from sn_det.tools.benchmark_sn import render_fixed_cost

    times = {"SN (sn_det)": 90e-6, "SN textbook": 600e-6, "BatchNorm2d": 40e-6,
             "GroupNorm(32)": 50e-6}  # fmt: skip
    ops = {"SN (sn_det)": 9, "SN textbook": 109, "BatchNorm2d": 6, "GroupNorm(32)": 11}
    text = "\n".join(render_fixed_cost(times, ops, sn_layers=100, shape=(2, 8, 4, 4), steps=7))
    assert "(2, 8, 4, 4)" in text and "7 back-to-back steps" in text
    rows = {r[0]: r for r in _fixed_rows(text)}
    assert rows["SN (sn_det)"] == ["SN (sn_det)", "90", "2.25", "1.80", "9"]
    assert rows["SN textbook"] == ["SN textbook", "600", "15.00", "12.00", "109"]
    assert rows["GroupNorm(32)"][1:] == ["50", "1.25", "1.00", "11"]
    # 100 layers x (90 - 50) us = 4.0 ms
    assert "about 100 x (SN - GN) = 4.0 ms per step" in text
    # Without device counts (the CPU, or no CUPTI) the column says "-"; no estimate without
    # the model's layer count.
    text = "\n".join(render_fixed_cost(times))
    assert all(r[4] == "-" for r in _fixed_rows(text)) and "per step from" not in text


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_round_orders_put_every_norm_after_every_other(n):
    from sn_det.tools.benchmark_sn import round_order

    names = [f"norm{i}" for i in range(n)]
    period = n if n % 2 == 0 else 2 * n
    orders = [round_order(names, r) for r in range(period)]
    assert all(sorted(o) == names for o in orders)  # each timed once per round
    assert round_order(names, period) == orders[0]
    pairs = [(a, b) for o in orders for a, b in zip(o, o[1:])]
    # Every ordered pair of distinct norms, equally often: none always follows the same one.
    expected = [(a, b) for a in names for b in names if a != b] * (period // n)
    assert sorted(pairs) == sorted(expected)
    # and every norm is first in some round
    assert {o[0] for o in orders} == set(names)


def test_the_tool_refuses_in_one_sentence(tmp_path):
    proc = run_tool(BENCH, "--shapes", "2x30x6x6", "--out", str(tmp_path / "b.md"))
    one_sentence_exit_2(proc.returncode, proc.stdout + proc.stderr, "multiple of 32")


def test_cuda_without_a_gpu_says_so(tmp_path):
    import torch

    from sn_det.tools.benchmark_sn import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit) as e:
        main(["--device", "cuda", "--skip-model", "--out", str(tmp_path / "b.md")])
    # sys.exit(message): the interpreter prints it to stderr and exits 1.
    assert re.fullmatch(r"error: .*no CUDA GPU.*", str(e.value.code)), e.value.code
    assert os.listdir(tmp_path) == []
