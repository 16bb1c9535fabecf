import os
import sys

import pytest
import torch

# Without a GPU, the Triton kernels run on CPU tensors in Triton's interpreter (read when a
# kernel is defined, so before anything imports sn_det's Triton module).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests import their plain reference implementations (sn_reference.py) from this folder.
sys.path.insert(0, os.path.dirname(__file__))
from tool_runner import INSTANT, train_net  # noqa: E402

# 2-core CI machines: keep intra-op threads bounded and runs reproducible.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Fixed seed and data in the main process: instant_run is also the uninterrupted reference of
# the kill -9 and --resume test (tests/test_resume.py), which must end bit-identical to it.
INSTANT_RUN_ARGS = [
    "--config-file",
    INSTANT,
    "SOLVER.MAX_ITER",
    "4",
    "SOLVER.CHECKPOINT_PERIOD",
    "2",
    "DATASETS.TEST",
    "()",
    "SEED",
    "0",
    "DATALOADER.NUM_WORKERS",
    "0",
]


@pytest.fixture(scope="session")
def instant_run(tmp_path_factory):
    """A 4-iteration training run of the instant config with checkpoints every 2 iterations
    (model_0000001.pth, model_0000003.pth, model_final.pth) and no evaluation, shared by the
    tests that need a trained checkpoint. Tests that change the folder copy it first.
    Its arguments are ``INSTANT_RUN_ARGS`` and OUTPUT_DIR.

    Returns:
        (output folder, training log).
    """
    out = str(tmp_path_factory.mktemp("instant_run"))
    code, log = train_net(*INSTANT_RUN_ARGS, "OUTPUT_DIR", out)
    assert code == 0, log[-5000:]
    return out, log
