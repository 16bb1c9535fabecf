"""projects/SparseSN: sparsemax/sparsestmax against plain float64 references, the Sparse SN
layers, their registration and checkpoints, and a short training run whose choices must end
one-hot."""

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

from sn_det.layers import get_norm
from sn_det.projects.sparse_sn import (
    SparseSwitchNorm2d,
    SyncSparseSwitchNorm2d,
    add_sparse_sn_config,
    radius_at,
    sparsemax,
    sparsestmax,
    vertex_radius,
)
from sn_reference import reference_switch_norm
from sn_testing import HOST_SYNC_OPS, assert_close, dispatched_ops, make_layer, random_input

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTANT = os.path.join(
    REPO, "projects", "SparseSN", "configs", "quick_schedules", "mask_rcnn_ssn_instant_test.yaml"
)


SPARSESTMAX = importlib.import_module("sn_det.projects.sparse_sn.sparsestmax")


@pytest.fixture(params=["host", "torch ops"])
def implementation(request, monkeypatch):
    """Both implementations of sparsestmax: on the host (CPU tensors) and in torch ops (GPU,
    tracing, torch.compile)."""
    monkeypatch.setattr(SPARSESTMAX, "HOST_ON_CPU", request.param == "host")
    return request.param


# ------------------------------------------------------------------ plain references
def plain_sparsemax(z):
    """Projection onto the simplex by bisection on the threshold: sum max(z - tau, 0) = 1."""
    z = [float(v) for v in z]
    lo, hi = min(z) - 1.0, max(z)
    for _ in range(200):
        tau = (lo + hi) / 2
        if sum(max(v - tau, 0.0) for v in z) > 1:
            lo = tau
        else:
            hi = tau
    return torch.tensor([max(v - (lo + hi) / 2, 0.0) for v in z], dtype=torch.double)


def brute_force_sparsestmax(z, r, step=1e-3):
    """The simplex point at least r from its centre that is nearest to sparsemax(z), by a
    search over a grid of the simplex (ties: every nearest point is returned)."""
    p0 = plain_sparsemax(z)
    k = len(p0)
    grid = torch.arange(0, 1 + step / 2, step, dtype=torch.double)
    if k == 2:
        pts = torch.stack([grid, 1 - grid], 1)
    else:
        a, b = torch.meshgrid(grid, grid, indexing="ij")
        keep = a + b <= 1 + 1e-12
        pts = torch.stack([a[keep], b[keep], (1 - a - b)[keep].clamp_min(0)], 1)
    far = (pts - 1.0 / k).norm(dim=1) >= r - step  # the grid straddles the sphere
    dist = (pts[far] - p0).norm(dim=1)
    best = dist.min()
    return pts[far][dist <= best + 2 * step], best


CASES = [
    ([0.3, 0.2, 0.1], 0.3),  # pushed radially, stays inside the simplex
    ([0.3, 0.2, 0.1], 0.6),  # the ray leaves the simplex: onto an edge
    ([0.9, -0.4, 0.2], 0.5),
    ([2.0, 0.1, 0.0], 0.4),  # sparsemax already one-hot: unchanged
    ([1.0, 1.0, 0.0], 0.5),  # a tie between the two largest logits
    ([0.5, 0.1], 0.5),
    ([0.5, 0.1], 0.2),
]


@pytest.mark.parametrize("z", [c[0] for c in CASES] + [[1.0, 1.0, 1.0], [3.0, -1.0]])
def test_sparsemax_matches_the_bisection_reference(z):
    z = torch.tensor(z, dtype=torch.double)
    assert_close(sparsemax(z), plain_sparsemax(z), 1e-9, "sparsemax")


@pytest.mark.parametrize("z,r", CASES)
def test_sparsestmax_is_the_nearest_admissible_point(z, r, implementation):
    z = torch.tensor(z, dtype=torch.double)
    p = sparsestmax(z, r)
    assert abs(float(p.sum()) - 1) < 1e-12 and (p >= 0).all()
    assert float((p - 1.0 / len(z)).norm()) >= r - 1e-9 or float(p.max()) == 1.0
    candidates, best = brute_force_sparsestmax(z, r)
    assert float((candidates - p).norm(dim=1).min()) <= 3e-3, (p, candidates)
    assert abs(float((p - plain_sparsemax(z)).norm()) - float(best)) <= 3e-3


@pytest.mark.parametrize("z", [[0.3, 0.2, 0.1], [0.9, -0.4, 0.2], [0.5, 0.1]])
def test_radius_zero_is_sparsemax_and_the_vertex_radius_is_one_hot(z, implementation):
    z = torch.tensor(z, dtype=torch.double)
    assert torch.equal(sparsestmax(z, 0.0), sparsemax(z))
    p = sparsestmax(z, vertex_radius(len(z)))
    assert torch.allclose(p, torch.nn.functional.one_hot(z.argmax(), len(z)).double())


@pytest.mark.parametrize("z,r", [c for c in CASES if c[0] != [1.0, 1.0, 0.0]])
def test_sparsestmax_gradient(z, r, implementation):
    z = torch.tensor(z, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: sparsestmax(v, r), (z,))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_host_and_torch_ops_implementations_agree(k, dtype, monkeypatch):
    """Same values and gradients from both, over random logits and radii that reach every
    case (unchanged, pushed radially, onto an edge, one-hot), ties and equal logits included.
    (Away from near-ties: at logits one float32 ulp apart the edge case picks a side by
    rounding, and the two forms may pick different sides.)"""
    g = torch.Generator().manual_seed(k)
    cases = [(torch.randn(k, generator=g), float(torch.rand((), generator=g))) for _ in range(60)]
    cases += [(torch.ones(k), 0.3), (torch.tensor([1.0, 1.0, 0.0][:k]), 0.5)]
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for z, r in cases:
        r = r * vertex_radius(k)
        dy = torch.randn(k, generator=g, dtype=dtype)
        results = []
        for host in (True, False):
            monkeypatch.setattr(SPARSESTMAX, "HOST_ON_CPU", host)
            zi = z.to(dtype).requires_grad_(True)
            q = sparsestmax(zi, r)
            q.backward(dy)
            results.append((q.detach(), zi.grad))
        (q_host, g_host), (q_ops, g_ops) = results
        assert q_host.dtype == dtype and torch.allclose(q_host, q_ops, rtol=0, atol=tol), (z, r)
        assert torch.allclose(g_host, g_ops, rtol=0, atol=100 * tol), (z, r, g_host, g_ops)


@pytest.mark.parametrize("k", [2, 3])
def test_equal_float32_logits_stay_at_the_centre(k, implementation):
    """Equal logits have no direction to push along: the output is the centre, on the simplex.
    (In float32 sparsemax lands ~2e-8 off the centre along (1, ..., 1); pushing along that
    once gave 0.19 three times, summing to 0.58.)"""
    p = sparsestmax(torch.ones(k), 0.4)
    assert torch.allclose(p, torch.full((k,), 1.0 / k)) and abs(float(p.sum()) - 1) < 1e-6


@pytest.mark.parametrize("z", [[0.5, 0.0, 0.0], [2.0, 1.0, 1.0]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_hot_at_the_vertex_radius_has_no_gradient(z, dtype, implementation):
    """The two smaller logits tied: at the vertex radius the radial push lands exactly on the
    vertex, where the output is one-hot whatever the logits nearby, so the gradient is 0."""
    z = torch.tensor(z, dtype=dtype, requires_grad=True)
    r = torch.tensor(vertex_radius(3)).to(torch.float32).to(dtype)  # a layer's float32 radius
    q = sparsestmax(z, r)
    q.backward(torch.tensor([0.3, 1.0, -0.5], dtype=dtype))
    assert q.tolist() == [1.0, 0.0, 0.0] and z.grad.abs().max() == 0, (q, z.grad)


def test_tracing_and_transforms_take_the_torch_ops_form(monkeypatch):
    """The host form is plain eager only: make_fx records the computation (not a constant)
    and torch.func's jacrev differentiates it, with HOST_ON_CPU on."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.func import jacrev

    monkeypatch.setattr(SPARSESTMAX, "HOST_ON_CPU", True)
    z = torch.tensor([0.3, 0.2, 0.1], dtype=torch.double)
    traced = make_fx(lambda v: sparsestmax(v, 0.3))(z)
    other = torch.tensor([0.0, 0.0, 5.0], dtype=torch.double)
    assert torch.equal(traced(other), sparsestmax(other, 0.3))
    jac = jacrev(lambda v: sparsestmax(v, 0.3))(z)
    assert torch.allclose(jac, torch.autograd.functional.jacobian(lambda v: sparsestmax(v, 0.3), z))


def test_the_host_implementation_refuses_a_second_derivative(monkeypatch):
    monkeypatch.setattr(SPARSESTMAX, "HOST_ON_CPU", True)
    z = torch.tensor([0.3, 0.2, 0.1], dtype=torch.double, requires_grad=True)
    q = sparsestmax(z, 0.3)
    (first,) = torch.autograd.grad((q * q).sum(), z, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        first.sum().backward()


# ------------------------------------------------------------------ the layer
def _ssn(c, using_bn=True, radius=0.3, seed=0):
    sn = make_layer(c, using_bn=using_bn, seed=seed)
    m = SparseSwitchNorm2d(c, using_bn=using_bn).double()
    m.load_state_dict(sn.state_dict(), strict=False)
    m.radius.fill_(radius)
    return m


@pytest.mark.parametrize("using_bn,training", [(True, True), (True, False), (False, True)])
def test_layer_matches_reference_with_sparsestmax_weights(using_bn, training):
    m = _ssn(5, using_bn).train(training)
    x = random_input((3, 5, 4, 6))
    x_ref = x.detach().clone().requires_grad_(True)
    pm, pv = (sparsestmax(w.detach(), 0.3) for w in (m.mean_weight, m.var_weight))
    params = [m.weight.detach().clone(), m.bias.detach().clone(), pm.log(), pv.log()]
    rm = m.running_mean.clone() if using_bn else None
    rv = m.running_var.clone() if using_bn else None
    # softmax(log p) = p exactly (log 0 = -inf gives 0): the reference mixes with p.
    y_ref, _, _ = reference_switch_norm(x_ref, *params, rm, rv, training=training)
    y = m(x)
    assert_close(y, y_ref, what="SSN forward")
    y.pow(2).sum().backward()
    y_ref.pow(2).sum().backward()
    assert_close(x.grad, x_ref.grad, what="SSN input gradient")


def test_layer_gradcheck_through_sparsestmax():
    m = _ssn(3, radius=0.45)
    x = random_input((2, 3, 3, 2))
    names = ("weight", "bias", "mean_weight", "var_weight")
    inputs = (x,) + tuple(getattr(m, n).detach().clone().requires_grad_(True) for n in names)
    assert torch.autograd.gradcheck(
        lambda x, *p: torch.func.functional_call(m, dict(zip(names, p)), (x,)), inputs
    )


@pytest.mark.parametrize("z", [[0.3, 0.2, 0.1], [0.9, -0.4, 0.2], [0.5, 0.1]])
def test_sparsestmax_and_the_layer_forward_never_wait_for_the_device(z, monkeypatch):
    # What a GPU runs: the torch-ops implementation (the host one is for CPU tensors).
    monkeypatch.setattr(SPARSESTMAX, "HOST_ON_CPU", False)
    z = torch.tensor(z, requires_grad=True)
    assert not dispatched_ops(lambda: sparsestmax(z, 0.6).sum().backward()) & HOST_SYNC_OPS
    m = _ssn(4, radius=0.5).float()
    x = torch.randn(2, 4, 3, 3)

    def step():
        m(x).sum().backward()

    step()  # the first forward after a load reads the fixed choices to the host, once
    assert not dispatched_ops(step) & HOST_SYNC_OPS
    with torch.no_grad():  # a fixed choice: the one-hot weights are made on the device
        m.mean_weight.copy_(torch.tensor([0.0, 0.1, 2.0]))
    m.radius.fill_(vertex_radius(3))
    assert m.fix_one_hot_choices() >= 1
    step()
    ops = dispatched_ops(step)
    assert not ops & HOST_SYNC_OPS, ops & HOST_SYNC_OPS


def test_fixed_bn_choice_evaluates_as_batch_norm():
    m = _ssn(4, radius=vertex_radius(3))
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([0.0, 0.1, 2.0]))
        m.var_weight.copy_(torch.tensor([0.0, 0.1, 2.0]))
    assert m.fix_one_hot_choices() == 2 and m.choices() == ("BN", "BN")
    m.eval()
    x = random_input((2, 4, 5, 5)).detach()
    plain = make_layer(4)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if k in plain.state_dict()})
    with torch.no_grad():
        plain.mean_weight.copy_(torch.tensor([-1e4, -1e4, 0.0]))  # softmax = (0, 0, 1)
        plain.var_weight.copy_(torch.tensor([-1e4, -1e4, 0.0]))
    assert_close(m(x), plain.eval()(x), what="BN-only evaluation")


def test_importance_ratios_show_the_sparse_mixing():
    """The importance charts/logs show what a Sparse SN layer mixes with (sparsestmax, one-hot
    at the vertex radius), not the softmax of its logits."""
    from sn_det.modeling import importance_ratios

    m = _ssn(4, radius=vertex_radius(3))
    with torch.no_grad():
        m.mean_weight.copy_(torch.tensor([0.0, 0.1, 2.0]))
        m.var_weight.copy_(torch.tensor([1.5, 0.1, 0.0]))
    (row,) = importance_ratios(torch.nn.Sequential(m))
    assert row.mean == pytest.approx((0.0, 0.0, 1.0)) and row.var == pytest.approx((1.0, 0.0, 0.0))


def test_fixed_choices_take_no_gradient_and_checkpoints_round_trip(tmp_path):
    m = _ssn(4, radius=vertex_radius(3))
    assert m.fix_one_hot_choices() == 2
    m(random_input((2, 4, 3, 3))).sum().backward()
    assert m.mean_weight.grad is None and m.var_weight.grad is None
    path = str(tmp_path / "ssn.pth")
    torch.save(m.state_dict(), path)
    back = SparseSwitchNorm2d(4).double()
    back.load_state_dict(torch.load(path, weights_only=True))
    assert back.choices() == m.choices() and float(back.radius) == float(m.radius)
    # An SN state dict (e.g. an ImageNet SN backbone) loads strictly, with the choices open.
    fresh = SparseSwitchNorm2d(4).double()
    fresh.load_state_dict(make_layer(4).state_dict())
    assert fresh.choices() == (None, None)


def test_registered_names_and_radius_schedule():
    from detectron2.config import get_cfg

    from sn_det import add_sn_config

    cfg = add_sparse_sn_config(add_sn_config(get_cfg()))
    assert type(get_norm("SSN", 8, cfg)) is SparseSwitchNorm2d
    assert type(get_norm("SyncSSN", 8, cfg)) is SyncSparseSwitchNorm2d
    cfg.SOLVER.MAX_ITER = 100
    cfg.MODEL.SSN.RAMP = (0.2, 0.6)
    assert [radius_at(i, cfg) for i in (0, 20, 40, 60, 99)] == [0.0, 0.0, 0.5, 1.0, 1.0]


def test_short_run_ends_with_every_choice_one_hot(tmp_path):
    out = str(tmp_path / "run")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "projects", "SparseSN", "train_net.py"),
            "--config-file",
            INSTANT,
            "DATASETS.TEST",
            "()",
            "OUTPUT_DIR",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    choices = [int(v) for k, v in state.items() if k.endswith(("mean_choice", "var_choice"))]
    assert len(choices) >= 40 and all(c in (0, 1, 2) for c in choices), choices
    # The schedule was driven by the iteration: early radii small, late ones at the vertex.
    with open(os.path.join(out, "metrics.json")) as f:
        logged = [json.loads(line) for line in f]
    logged = [r for r in logged if "ssn/fixed_choices" in r]
    assert logged and logged[-1]["ssn/fixed_choices"] == 1.0
