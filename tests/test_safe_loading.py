"""No code runs from a checkpoint: a hostile pickle (its __reduce__ would create a marker
file) is refused by every entry point with one sentence, and the marker never appears;
data-only files (sn_det's, detectron2's .pkl, latin-1 era pickles) still load; the opt-in
loads a trusted legacy file."""

import datetime
import os
import pickle

import numpy as np
import pytest
import torch

from sn_det.checkpoint import (
    TRUST_ENV,
    CheckpointConversionError,
    UntrustedCheckpointError,
    load_checkpoint_file,
)
from tool_runner import INSTANT, TOOLS, one_step, run_tool


class _Hostile:
    """Unpickling this calls open(marker, "w"): a stand-in for any command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _hostile_file(tmp_path, name):
    """A hostile checkpoint named ``name``: torch's zip format for .pth/.pyth (as torch.save
    writes it), a raw pickle otherwise. Returns (path, marker)."""
    marker = str(tmp_path / f"PWNED_{name}")
    path = str(tmp_path / name)
    payload = {"model": {"w": torch.zeros(1)}, "extra": _Hostile(marker)}
    if name.endswith((".pth", ".pyth")):
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path, marker


@pytest.mark.parametrize("name", ["hostile.pkl", "hostile.pth", "hostile.pyth", "raw_pickle.bin"])
def test_the_loader_refuses_code_and_runs_none(tmp_path, monkeypatch, name):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = _hostile_file(tmp_path, name)
    with pytest.raises(UntrustedCheckpointError, match="loading it could run code: refused") as e:
        load_checkpoint_file(path)
    assert not os.path.exists(marker)
    # What torch objected to, whole words, without its "weights_only=False" advice.
    why = str(e.value).split(" (", 1)[1].split("), and loading", 1)[0]
    assert "weights_only" not in why and "trusted so" not in why, why


def test_data_only_files_load(tmp_path, monkeypatch):
    monkeypatch.delenv(TRUST_ENV, raising=False)
    arrays = {"conv1.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "fc.b": np.zeros(2)}
    # detectron2 model zoo layout, protocol 2 (bytes go through _codecs.encode, as in
    # Python 2 era files, which detectron2 reads with encoding="latin1")
    zoo = tmp_path / "zoo.pkl"
    zoo.write_bytes(pickle.dumps({"model": arrays, "__author__": "Detectron"}, protocol=2))
    loaded = load_checkpoint_file(str(zoo))
    assert loaded["__author__"] == "Detectron"
    assert np.array_equal(loaded["model"]["conv1.weight"], arrays["conv1.weight"])
    # a Detectron1/Caffe2 dict of blobs
    blobs = tmp_path / "blobs.pkl"
    blobs.write_bytes(pickle.dumps({"blobs": arrays}))
    assert set(load_checkpoint_file(str(blobs))["blobs"]) == set(arrays)
    # an sn_det/detectron2 training checkpoint: tensors, optimizer state, numbers
    ckpt = tmp_path / "model_final.pth"
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iteration": 3}, ckpt)
    assert load_checkpoint_file(str(ckpt))["iteration"] == 3


def test_the_opt_in_loads_a_trusted_legacy_file(tmp_path, monkeypatch):
    path = tmp_path / "legacy.pkl"
    path.write_bytes(pickle.dumps({"model": {}, "date": datetime.date(2019, 1, 1)}))
    monkeypatch.delenv(TRUST_ENV, raising=False)
    with pytest.raises(UntrustedCheckpointError, match="datetime.date"):
        load_checkpoint_file(str(path))
    monkeypatch.setenv(TRUST_ENV, "1")
    assert load_checkpoint_file(str(path))["date"] == datetime.date(2019, 1, 1)


@pytest.mark.parametrize("content", [b"hello\n" * 20, b"", b"\x80\x02}q\x00(X"])
def test_garbage_is_one_sentence(tmp_path, content):
    for name in ("x.pkl", "x.pth"):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointConversionError, match="is not a readable checkpoint"):
            load_checkpoint_file(str(path))


def _run(tool, *args):
    """tools/``tool`` with ``args``, without the opt-in to loading code."""
    return run_tool(os.path.join(TOOLS, tool), *args, drop=(TRUST_ENV,))


def _assert_refused(proc, path, marker):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and path in last and "could run code" in last, last
    assert not os.path.exists(marker)


def test_train_net_refuses_hostile_weights(tmp_path):
    # A raw pickle: the form detectron2's own checkpointer would unpickle whole.
    path, marker = _hostile_file(tmp_path, "hostile.pkl")
    proc = _run(
        "train_net.py", "--config-file", INSTANT, "MODEL.WEIGHTS", path, *one_step(tmp_path / "out")
    )
    _assert_refused(proc, path, marker)


@pytest.mark.parametrize("name", ["hostile.pkl", "hostile.pth", "hostile.pyth"])
def test_the_trainers_checkpointer_refuses_hostile_weights(tmp_path, monkeypatch, name):
    # Every suffix detectron2's checkpointer reads its own way (.pkl pickle, .pyth pycls,
    # torch.load otherwise), through what train_net loads MODEL.WEIGHTS with, in this process
    # (a command start costs ~8 s on these CPUs; the command's exit is checked above).
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from sn_det import add_sn_config
    from sn_det.checkpoint import SNDetectionCheckpointer

    monkeypatch.delenv(TRUST_ENV, raising=False)
    path, marker = _hostile_file(tmp_path, name)
    cfg = add_sn_config(get_cfg())
    cfg.merge_from_file(INSTANT)
    checkpointer = SNDetectionCheckpointer(build_model(cfg), str(tmp_path / "out"))
    with pytest.raises(UntrustedCheckpointError, match="loading it could run code: refused"):
        checkpointer.resume_or_load(path, resume=False)
    assert not os.path.exists(marker)


def test_converter_and_visualizer_refuse_hostile_files(tmp_path):
    path, marker = _hostile_file(tmp_path, "hostile.pth")
    proc = _run("convert_sn_to_d2.py", "--ckpt", path, "--dst", str(tmp_path / "o.pth"))
    _assert_refused(proc, path, marker)
    assert not os.path.exists(tmp_path / "o.pth")
    proc = _run(
        "visualize_sn.py", "--ckpt", path, "--config-file", INSTANT, "--out", str(tmp_path / "vis")
    )
    _assert_refused(proc, path, marker)


def test_eval_continuous_runs_no_code_from_its_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    path, marker = _hostile_file(folder, "model_0000001.pth")
    (folder / "last_checkpoint").write_text("model_0000001.pth")
    proc = _run(
        "eval_continuous.py",
        "--config-file",
        INSTANT,
        "--load-dir",
        str(folder),
        "--timeout",
        "2",
        "--poll",
        "0.2",
    )
    assert not os.path.exists(marker), proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "could run code" in proc.stdout + proc.stderr
