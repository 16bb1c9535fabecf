"""SyncSwitchNorm2d in 2 gloo processes against the float64 reference on the whole batch.

Rank r holds counts[r] consecutive samples of one batch. Forward outputs and input gradients
(per rank), parameter gradients (summed over ranks) and running statistics (on every rank)
must equal the plain reference applied to the concatenated batch. A rank holding zero
samples must still take part in every collective: a skipped one hangs, which the bounded
runner turns into a failure.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from distributed import run_distributed
from sn_det.layers import SwitchNorm2d, SyncSwitchNorm2d, get_norm, resolve_norm
from sn_reference import reference_switch_norm
from sn_testing import (
    HOST_SYNC_OPS,
    assert_close,
    dispatched_ops,
    make_layer,
    random_input,
    reference_params,
)

RTOL = 1e-6  # the bound; float64 reaches ~1e-15
C, H, W = 6, 5, 4
MOMENTUM = 0.9
STEPS = 2  # running statistics must stay identical step after step

# (name, samples per rank, using_bn, moving average, under no_grad)
CASES = [
    ("1+2", (1, 2), True, True, False),
    ("0+2", (0, 2), True, True, False),
    ("2+0", (2, 0), True, True, False),
    ("0+0", (0, 0), True, True, False),
    # Rank 0 holds 2 samples of empty planes (H*W == 0): no statistics, so the result is 0+2's.
    ("2 empty+2", (0, 2), True, True, False),
    ("1+2 without BN", (1, 2), False, True, False),
    ("1+2 batch average, no grad", (1, 2), True, False, True),
]


def _batch(n, step):
    x = random_input((n, C, H, W), seed=100 + step).detach()
    dy = torch.randn((n, C, H, W), generator=torch.Generator().manual_seed(200 + step))
    return x, dy.double()


EMPTY_PLANES = "2 empty+2"
PATHS = ["kernels", "torch ops"]  # sn_det's CPU kernels, and the torch ops CUDA falls back to


def _run_cases(rank, world_size):
    """Each case on this rank's slice, on both paths; returns what the parent compares."""
    from sn_det.layers import sn_kernels

    out = {}
    for path in PATHS:
        if path == "torch ops":
            # The count stays a tensor there (no host read on a GPU): its arithmetic differs.
            sn_kernels._C = None
        out[path] = _run_path(rank)
    # The ops a GPU runs without Triton read nothing back to the host in a training step.
    out["host syncs"] = set()
    for moving in (True, False):
        layer = make_layer(C, moving=moving, cls=SyncSwitchNorm2d)
        x = random_input((1 + rank, C, H, W), seed=7).detach().requires_grad_(True)
        out["host syncs"] |= dispatched_ops(lambda: layer(x).sum().backward()) & HOST_SYNC_OPS
    return out


def _run_path(rank):
    out = {}
    for name, counts, using_bn, moving, no_grad in CASES:
        layer = make_layer(C, using_bn=using_bn, moving=moving, cls=SyncSwitchNorm2d)
        layer.momentum = MOMENTUM
        start, stop = sum(counts[:rank]), sum(counts[: rank + 1])
        steps = []
        for step in range(STEPS):
            layer.zero_grad()
            x_all, dy_all = _batch(sum(counts), step)
            x, dy = x_all[start:stop].clone(), dy_all[start:stop]
            if name == EMPTY_PLANES and rank == 0:
                x = dy = x.new_zeros((2, C, 0, W))
            x.requires_grad_(not no_grad)
            with torch.set_grad_enabled(not no_grad):
                y = layer(x)
                if not no_grad:
                    (y * dy).sum().backward()
            steps.append(
                dict(
                    y=y.detach(),
                    dx=None if no_grad else x.grad,
                    grads=(
                        None
                        if no_grad
                        else [p.grad.clone() for p in (layer.weight, layer.bias)]
                        + [layer.mean_weight.grad.clone(), layer.var_weight.grad.clone()]
                    ),
                )
            )
        buffers = {k: v.clone() for k, v in layer.state_dict().items() if "running" in k}
        out[name] = dict(steps=steps, buffers=buffers)
    return out


@pytest.fixture(scope="module")
def two_rank_results():
    return run_distributed(_run_cases, 2, timeout=180)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_two_ranks_equal_the_reference_on_the_whole_batch(two_rank_results, case, path):
    name, counts, using_bn, moving, no_grad = case
    two_rank_results = [r[path] for r in two_rank_results]
    layer = make_layer(C, using_bn=using_bn, moving=moving)
    params = reference_params(layer)
    running = [layer.running_mean.clone(), layer.running_var.clone()] if using_bn else None
    for step in range(STEPS):
        x, dy = _batch(sum(counts), step)
        x.requires_grad_(True)
        for p in params:
            p.grad = None
        y_ref, mean_bn, var_bn = reference_switch_norm(x, *params, training=True)
        (y_ref * dy).sum().backward()
        got = [r[name]["steps"][step] for r in two_rank_results]
        bounds = [0, counts[0], sum(counts)]
        for rank in range(2):
            if name == EMPTY_PLANES and rank == 0:
                assert got[0]["y"].shape == got[0]["dx"].shape == (2, C, 0, W)
                continue
            rows = slice(bounds[rank], bounds[rank + 1])
            assert_close(got[rank]["y"], y_ref[rows].detach(), RTOL, f"{name} y rank {rank}")
            if not no_grad:
                assert_close(got[rank]["dx"], x.grad[rows], RTOL, f"{name} dx rank {rank}")
        if not no_grad and sum(counts) > 0:
            for i, p in enumerate(params):
                summed = got[0]["grads"][i] + got[1]["grads"][i]
                assert_close(summed, p.grad, RTOL, f"{name} parameter {i} grad summed")
        if using_bn and sum(counts) > 0:  # a batch without samples changes nothing
            if moving:  # momentum weighs the OLD value
                running[0] = MOMENTUM * running[0] + (1 - MOMENTUM) * mean_bn.detach()
                running[1] = MOMENTUM * running[1] + (1 - MOMENTUM) * var_bn.detach()
            else:  # batch-average sums
                running[0] = running[0] + mean_bn.detach()
                running[1] = running[1] + mean_bn.detach() ** 2 + var_bn.detach()
    if using_bn:
        for rank in range(2):
            buffers = two_rank_results[rank][name]["buffers"]
            assert_close(buffers["running_mean"], running[0], RTOL, f"{name} running_mean")
            assert_close(buffers["running_var"], running[1], RTOL, f"{name} running_var")
        # Identical, not merely close, on every rank.
        for key in ("running_mean", "running_var"):
            assert torch.equal(
                two_rank_results[0][name]["buffers"][key], two_rank_results[1][name]["buffers"][key]
            )
    else:
        assert two_rank_results[0][name]["buffers"] == {}


def _identical_to_switch_norm():
    torch.manual_seed(0)
    plain = make_layer(C)
    sync = make_layer(C, cls=SyncSwitchNorm2d)
    outs = []
    for m in (plain, sync):
        x, dy = _batch(3, 0)
        x.requires_grad_(True)
        (m(x) * dy).sum().backward()
        outs.append([m(x).detach(), x.grad, m.weight.grad, m.var_weight.grad, m.running_var])
    return all(torch.equal(a, b) for a, b in zip(*outs))


def test_a_training_step_on_the_torch_ops_reads_nothing_back(two_rank_results):
    assert [r["host syncs"] for r in two_rank_results] == [set(), set()]


def test_without_process_group_it_is_exactly_switch_norm():
    assert not (dist.is_available() and dist.is_initialized())
    assert _identical_to_switch_norm()


def test_world_size_one_is_exactly_switch_norm():
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group(
            "gloo", init_method=f"file://{os.path.join(tmp, 'pg')}", rank=0, world_size=1
        )
        try:
            assert _identical_to_switch_norm()
        finally:
            dist.destroy_process_group()


def test_checkpoints_move_between_sn_and_sync_sn():
    plain = make_layer(C, seed=3)
    sync = SyncSwitchNorm2d(C).double()
    sync.load_state_dict(plain.state_dict())
    assert list(sync.state_dict()) == list(plain.state_dict())
    back = SwitchNorm2d(C).double()
    back.load_state_dict(sync.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(back.state_dict().values(), plain.state_dict().values())
    )


def test_sync_sn_is_a_registered_norm_name():
    from detectron2.config import get_cfg

    from sn_det import add_sn_config

    cfg = get_cfg()
    add_sn_config(cfg)
    cfg.MODEL.SN.MOMENTUM = 0.9
    m = get_norm("SyncSN", 8, cfg)
    assert type(m) is SyncSwitchNorm2d and m.momentum == 0.9 and m.num_features == 8
    assert callable(resolve_norm("SyncSN", cfg))
