"""SwitchNorm2d against the plain float64 reference in sn_reference.py, plus every edge case
named in SN_FACTS.md (empty batch, 1x1 maps, half precision, frozen, batch-average mode)."""

import copy
import itertools
import warnings

import pytest
import torch

from sn_det.layers import SwitchNorm2d, switchable_norm
from sn_reference import reference_switch_norm
from sn_testing import (
    assert_close,
    make_layer,
    packed_by_saved_tensor_hooks,
    random_input,
    reference_params,
)
from triton_interpreter import skip_if_interpreter_broken

SHAPES = [(1, 3, 4, 5), (2, 8, 7, 3), (4, 5, 2, 2), (3, 16, 9, 11), (2, 4, 1, 6)]


@pytest.fixture(params=["fused", "staged"])
def cpu_path(request, monkeypatch):
    """Both compiled CPU paths of SwitchNorm2d: one call per direction (the default for a
    local BN term) and the staged calls that SyncSwitchNorm2d takes."""
    monkeypatch.setattr(switchable_norm, "FUSED_CPU", request.param == "fused")
    return request.param


@pytest.mark.parametrize(
    "shape,using_bn,training,last_gamma",
    [
        (s, bn, tr, lg)
        for s, bn, tr, lg in itertools.product(SHAPES, [True, False], [True, False], [False])
    ]
    + [((2, 6, 4, 4), True, True, True), ((2, 6, 4, 4), False, True, True)],
)
def test_forward_and_gradients_match_reference(shape, using_bn, training, last_gamma, cpu_path):
    m = make_layer(shape[1], using_bn=using_bn, last_gamma=last_gamma)
    m.train(training)
    params = reference_params(m)
    rm = m.running_mean.clone() if using_bn else None
    rv = m.running_var.clone() if using_bn else None

    x = random_input(shape)
    x_ref = x.detach().clone().requires_grad_(True)
    dy = torch.randn(shape, dtype=torch.double, generator=torch.Generator().manual_seed(7))

    y = m(x)
    y_ref, _, _ = reference_switch_norm(x_ref, *params, rm, rv, training=training)
    assert_close(y, y_ref, what="forward")

    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    assert_close(x.grad, x_ref.grad, what="input gradient")
    for name, p, p_ref in zip(
        ["weight", "bias", "mean_weight", "var_weight"],
        [m.weight, m.bias, m.mean_weight, m.var_weight],
        params,
    ):
        assert_close(p.grad, p_ref.grad, what=f"{name} gradient")


@pytest.mark.parametrize("moving", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 4, 5), (3, 6, 5, 4)])
def test_running_statistics_match_reference(moving, shape, cpu_path):
    m = make_layer(shape[1], moving=moving)
    m.momentum = 0.9
    rm = m.running_mean.detach().clone()
    rv = m.running_var.detach().clone()
    for step in range(3):
        x = random_input(shape, seed=10 + step)
        m(x)
        _, mean_bn, var_bn = reference_switch_norm(x.detach(), *reference_params(m), training=True)
        if moving:  # momentum weighs the OLD value
            rm = 0.9 * rm + 0.1 * mean_bn
            rv = 0.9 * rv + 0.1 * var_bn
        else:
            rm = rm + mean_bn
            rv = rv + mean_bn**2 + var_bn
    assert_close(m.running_mean, rm, what="running_mean")
    assert_close(m.running_var, rv, what="running_var")


def test_batch_average_finalize_is_pooled_statistics():
    c = 5
    m = make_layer(c, moving=False)
    m.reset_batch_average()
    batches = [random_input((2, c, 3, 4), seed=s).detach() for s in range(4)]
    with torch.no_grad():
        for b in batches:
            y = m(b)
            y_ref, _, _ = reference_switch_norm(b, *reference_params(m), training=True)
            assert_close(y, y_ref, what="training forward without grad")
    assert m.finalize_batch_average() == 4
    # Pooled over the K batches: mean of batch means, and mean of (var + mean^2) - mean^2.
    means, variances = [], []
    for b in batches:
        _, mb, vb = reference_switch_norm(b, *reference_params(m), training=True)
        means.append(mb)
        variances.append(vb)
    mean = torch.stack(means).mean(0)
    var = (torch.stack(variances) + torch.stack(means) ** 2).mean(0) - mean**2
    assert_close(m.running_mean, mean, what="pooled mean")
    assert_close(m.running_var, var, what="pooled var")
    with pytest.raises(RuntimeError, match="no training-mode forward"):
        m.finalize_batch_average()


def test_batch_average_requires_the_mode():
    with pytest.raises(RuntimeError, match="using_moving_average=False"):
        SwitchNorm2d(4).finalize_batch_average()
    with pytest.raises(RuntimeError, match="no BN term"):
        SwitchNorm2d(4, using_bn=False, using_moving_average=False).reset_batch_average()


def test_eval_mode_uses_running_statistics_and_does_not_update_them():
    m = make_layer(6).eval()
    before = (m.running_mean.clone(), m.running_var.clone())
    x = random_input((2, 6, 4, 4))
    y = m(x)
    y_ref, _, _ = reference_switch_norm(x, *reference_params(m), *before, training=False)
    assert_close(y, y_ref, what="eval forward")
    with torch.no_grad():  # the inference path (no autograd Function) must agree too
        assert_close(m(x), y_ref, what="eval forward without grad")
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])


def test_gradcheck():
    for using_bn, training in [(True, True), (True, False), (False, True)]:
        m = make_layer(3, using_bn=using_bn).train(training)
        x = random_input((2, 3, 3, 2))
        params = (m.weight, m.bias, m.mean_weight, m.var_weight)

        inputs = (x,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
        assert torch.autograd.gradcheck(
            lambda x, w, b, mw, vw: torch.func.functional_call(
                m, {"weight": w, "bias": b, "mean_weight": mw, "var_weight": vw}, (x,)
            ),
            inputs,
        )


def test_last_gamma_initialises_weight_to_zero():
    assert torch.count_nonzero(SwitchNorm2d(7, last_gamma=True).weight) == 0
    assert torch.all(SwitchNorm2d(7).weight == 1)


def test_parameter_and_buffer_names_and_defaults():
    m = SwitchNorm2d(4)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias", "mean_weight", "var_weight"]
    assert sorted(m.state_dict()) == sorted(
        ["weight", "bias", "mean_weight", "var_weight", "running_mean", "running_var"]
    )
    assert torch.all(m.mean_weight == 1) and m.mean_weight.shape == (3,)
    assert torch.all(m.running_mean == 0) and torch.all(m.running_var == 0)
    m2 = SwitchNorm2d(4, using_bn=False)
    assert sorted(m2.state_dict()) == ["bias", "mean_weight", "var_weight", "weight"]
    assert m2.var_weight.shape == (2,)
    assert "momentum=0.997" in repr(m) and "using_bn=False" in repr(m2)


@pytest.mark.parametrize("using_bn", [True, False])
def test_loads_published_state_dict_layout(using_bn):
    c = 6
    g = torch.Generator().manual_seed(3)
    k = 3 if using_bn else 2
    published = {
        "weight": torch.rand(1, c, 1, 1, generator=g),
        "bias": torch.randn(1, c, 1, 1, generator=g),
        "mean_weight": torch.randn(k, generator=g),
        "var_weight": torch.randn(k, generator=g),
    }
    if using_bn:
        published["running_mean"] = torch.randn(1, c, 1, generator=g)
        published["running_var"] = torch.rand(1, c, 1, generator=g)
    m = SwitchNorm2d(c, using_bn=using_bn)
    m.load_state_dict(published)  # strict
    for name, value in published.items():
        assert torch.equal(getattr(m, name), value.reshape(-1)), name
    # A wrong channel count still fails loudly.
    with pytest.raises(RuntimeError, match="size mismatch"):
        SwitchNorm2d(c + 1, using_bn=using_bn).load_state_dict(published)


EMPTY_SHAPES = [(0, 4, 5, 5), (2, 4, 0, 5), (2, 4, 5, 0)]  # no samples; empty planes


@pytest.mark.parametrize("moving", [True, False], ids=["moving", "batch_average"])
@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_empty_batch_keeps_running_stats_and_backward_works(shape, moving):
    # Empty planes (N > 0, H*W == 0) have no statistics either: their placeholder moments
    # (zeros) once went into the running statistics as a batch, pulling them towards zero.
    m = make_layer(4, moving=moving).train()
    before = (m.running_mean.clone(), m.running_var.clone(), m.num_batches_accumulated.clone())
    x = torch.zeros(shape, dtype=torch.double, requires_grad=True)
    y = m(x)
    assert y.shape == shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in m.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and torch.all(p.grad == 0)
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])
    assert torch.equal(m.num_batches_accumulated, before[2])
    with torch.no_grad():  # the inference path (no autograd Function) too
        assert m(x).shape == shape
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])


@pytest.mark.parametrize("using_bn", [True, False])
@pytest.mark.parametrize("n", [1, 3])
def test_one_by_one_maps_are_finite_and_match_reference(using_bn, n):
    m = make_layer(5, using_bn=using_bn).train()
    x = random_input((n, 5, 1, 1))
    x_ref = x.detach().clone().requires_grad_(True)
    params = reference_params(m)
    y = m(x)
    y_ref, _, _ = reference_switch_norm(x_ref, *params, training=True)
    assert torch.isfinite(y).all()
    assert_close(y, y_ref, what="1x1 forward")
    y.pow(2).sum().backward()
    y_ref.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert_close(x.grad, x_ref.grad, what="1x1 input gradient")
    for p in m.parameters():
        assert torch.isfinite(p.grad).all()


def test_bfloat16_autocast_on_cpu_is_finite_and_close():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    m = SwitchNorm2d(8).train()
    # A large common offset: E[x^2] - E[x]^2 would cancel catastrophically in bf16.
    x = torch.randn(2, 3, 16, 16) + 100.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        assert h.dtype == torch.bfloat16
        y = m(h)
    assert y.dtype == torch.bfloat16
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    # Statistics were taken in float32 of the bf16 values: compare with the fp32 layer on them.
    m32 = SwitchNorm2d(8).train()
    y32 = m32(h.detach().float())
    assert (y.float() - y32).abs().max() < 0.05 * y32.abs().max()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float16_autocast_on_cuda_matches_float32():
    torch.manual_seed(0)
    m = SwitchNorm2d(16).cuda().train()
    x = (torch.randn(2, 16, 32, 32, device="cuda") * 3 + 50).half()
    with torch.autocast("cuda", dtype=torch.float16):
        y = m(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    y32 = SwitchNorm2d(16).cuda().train()(x.float())
    assert (y.float() - y32).abs().max() < 1e-2 * y32.abs().max()


def test_frozen_layer_uses_running_stats_in_train_mode_and_does_not_train():
    m = make_layer(4).freeze().train()
    assert m.frozen and not any(p.requires_grad for p in m.parameters())
    assert "frozen=True" in repr(m)
    before = (m.running_mean.clone(), m.running_var.clone())
    x = random_input((3, 4, 5, 5))
    y = m(x)
    y_ref, _, _ = reference_switch_norm(x, *reference_params(m), *before, training=False)
    assert_close(y, y_ref, what="frozen forward")
    y.sum().backward()
    assert x.grad is not None and all(p.grad is None for p in m.parameters())
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])


def test_wrong_input_is_one_clear_error():
    m = SwitchNorm2d(4)
    with pytest.raises(ValueError, match=r"expects \(N, C, H, W\)"):
        m(torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="got an input with 3 channels"):
        m(torch.randn(2, 3, 5, 5))
    with pytest.raises(ValueError, match="weight of the old running value"):
        SwitchNorm2d(4, momentum=1.5)


def test_trace_in_eval_mode_matches_eager():
    m = make_layer(4).float().eval()
    x = torch.randn(2, 4, 6, 6)
    traced = torch.jit.trace(m, x)
    x2 = torch.randn(2, 4, 6, 6) * 3 + 1  # a different input: nothing may be baked in
    assert torch.allclose(traced(x2), m(x2), atol=1e-6)


def test_output_can_be_modified_in_place():
    # detectron2's blocks apply relu_ to the norm's output; gradients must stay exact.
    m = make_layer(4).train()
    x = random_input((2, 4, 5, 5))
    x_ref = x.detach().clone().requires_grad_(True)
    torch.relu_(m(x)).sum().backward()
    y_ref, _, _ = reference_switch_norm(x_ref, *reference_params(m), training=True)
    torch.relu(y_ref).sum().backward()
    assert_close(x.grad, x_ref.grad, what="input gradient through relu_")


@pytest.mark.parametrize("using_bn,training", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("shape", [(2, 8, 7, 3), (3, 5, 1, 1)])
def test_torch_ops_path_matches_reference(monkeypatch, shape, using_bn, training):
    """The path used on CUDA and where the compiled CPU kernels are absent."""
    from sn_det.layers import sn_kernels

    monkeypatch.setattr(sn_kernels, "_C", None)
    test_forward_and_gradients_match_reference(shape, using_bn, training, False, "torch_ops")


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
def test_torch_ops_path_empty_batch(monkeypatch, shape):
    from sn_det.layers import sn_kernels

    monkeypatch.setattr(sn_kernels, "_C", None)
    test_empty_batch_keeps_running_stats_and_backward_works(shape, moving=True)


def _step_results(m, x, dy, x_grad):
    """Output, gradients (None where absent) and buffers after a forward+backward of ``m``,
    then an inference forward in the same mode (which may update the running statistics)."""
    xr = x.clone().requires_grad_(x_grad)
    y = m(xr)
    y.backward(dy)
    out = [y, xr.grad] + [p.grad for p in m.parameters()] + [b.clone() for b in m.buffers()]
    with torch.no_grad():
        out.append(m(x))
    return out + [b.clone() for b in m.buffers()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 8, 5, 3), (3, 6, 1, 1), (1, 4, 7, 7)])
@pytest.mark.parametrize(
    "using_bn,mode,moving",
    [(True, "train", True), (True, "train", False), (True, "eval", True),
     (True, "frozen", True), (False, "train", True)],
)  # fmt: skip
def test_fused_cpu_path_is_bit_identical_to_the_staged_one(
    monkeypatch, dtype, shape, using_bn, mode, moving
):
    """The fused path runs the staged path's compiled steps in one call per direction, so
    every output, gradient and running statistic is the same to the last bit."""
    m = make_layer(shape[1], using_bn=using_bn, moving=moving).to(dtype)
    if mode == "frozen":
        m.freeze()
    m.train(mode != "eval")
    g = torch.Generator().manual_seed(3)
    # float32 data far from zero, channels_last input and a non-contiguous dy: the layouts
    # and the offset the passes must take as they are.
    x = (torch.randn(shape, generator=g) * 3 + 50).to(dtype, memory_format=torch.channels_last)
    dy = torch.randn(shape[::-1], generator=g).to(dtype).permute(3, 2, 1, 0)
    results = {}
    for path in ("fused", "staged"):
        monkeypatch.setattr(switchable_norm, "FUSED_CPU", path == "fused")
        layer = copy.deepcopy(m)
        calls = []
        monkeypatch.setattr(layer, "_fused_forward", _recording(layer._fused_forward, calls))
        results[path] = _step_results(layer, x, dy, x_grad=True)
        assert len(calls) == (2 if path == "fused" else 0), path  # the path really ran
    for i, (a, b) in enumerate(zip(results["fused"], results["staged"])):
        assert (a is None) == (b is None), i
        assert a is None or torch.equal(a, b), (i, (a - b).abs().max())


def _recording(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper


def test_fused_cpu_path_without_an_input_gradient(monkeypatch):
    """Only parameter gradients (a frozen stem's input): the fused backward skips dx."""
    m = make_layer(6)
    m2 = copy.deepcopy(m)
    x = random_input((2, 6, 4, 4)).detach()
    dy = torch.randn(2, 6, 4, 4, dtype=torch.double)
    fused = _step_results(m, x, dy, x_grad=False)
    monkeypatch.setattr(switchable_norm, "FUSED_CPU", False)
    staged = _step_results(m2, x, dy, x_grad=False)
    assert fused[1] is None and staged[1] is None
    for a, b in zip(fused[2:], staged[2:]):
        assert torch.equal(a, b)


def test_fused_cpu_path_is_one_cpp_autograd_node_and_refuses_a_second_derivative():
    """A training forward on the fused path records one C++ autograd node (no Python between
    forward and backward). Under create_graph=True the first derivative works and equals the
    plain one; differentiating it again is refused in one sentence, as the staged path's
    once_differentiable Function does."""
    m = SwitchNorm2d(4)
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = m(x)
    assert y.grad_fn.name() == "torch::autograd::CppNode<sn_det::FusedSwitchNorm>"
    (plain,) = torch.autograd.grad((y * y).sum(), x)
    (first,) = torch.autograd.grad((m(x) * m(x)).sum(), x, create_graph=True)
    assert torch.allclose(first, plain, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="cannot be differentiated again"):
        first.sum().backward()


@pytest.mark.parametrize("changed", ["x", "weight", "running_var"])
def test_cpu_paths_check_saved_inputs_for_in_place_changes(cpu_path, changed):
    """Both CPU paths save what their backward reads as saved variables: changing x, the
    weight, or (eval mode) the running statistics the BN term read, in place between forward
    and backward is refused by autograd rather than giving the gradient of other values."""
    m = SwitchNorm2d(4).train(changed != "running_var")
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    y = m(x)
    with torch.no_grad():
        {"x": x, "weight": m.weight, "running_var": m.running_var}[changed].mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("training", [True, False])
def test_cpu_paths_save_through_saved_tensor_hooks(cpu_path, training):
    """Everything either CPU backward reads goes through autograd's saved-tensor hooks (what
    offloading and memory accounting use): x, the weight and the 11 (N, C)-or-smaller state
    tensors; gradients from copies made by the hooks equal the plain ones."""
    m = make_layer(6).float().train(training)
    x = torch.randn(2, 6, 4, 4, requires_grad=True)
    packed = packed_by_saved_tensor_hooks(m, x, torch.randn(2, 6, 4, 4))
    assert packed[0] == (2, 6, 4, 4) and (6,) in packed and len(packed) == 13, packed
    assert all(torch.Size(s).numel() <= 2 * 6 for s in packed[1:]), packed


def test_which_layers_run_fused():
    """A local BN term on the compiled kernels, with every tensor of the input's dtype; never a
    synchronized layer (it pools between the steps), an empty input, or mixed dtypes."""
    from sn_det.layers import SyncSwitchNorm2d

    x = torch.randn(2, 4, 3, 3)

    def fused(m, x):
        return m._runs_fused(x, (m.weight, m.bias, *m._switch_inputs()))

    assert fused(SwitchNorm2d(4), x) and fused(SwitchNorm2d(4, using_bn=False), x)
    assert fused(switchable_norm.SwitchNorm2d(4).double(), x.double())
    assert not fused(SyncSwitchNorm2d(4), x)
    assert not SyncSwitchNorm2d._fusable and SwitchNorm2d._fusable
    assert not fused(SwitchNorm2d(4), x[:0]) and not fused(SwitchNorm2d(4), x[:, :, :0])
    assert not fused(SwitchNorm2d(4), x.double())  # float32 parameters, float64 input
    m = SwitchNorm2d(4)
    m.running_var = m.running_var.double()
    assert not fused(m, x)


def test_compiled_cpu_kernels_are_built():
    # setup.py builds them; without them CPU training silently runs the slower path.
    from sn_det.layers import sn_kernels

    assert sn_kernels.has_cpu_kernels()


@pytest.mark.parametrize("offset", [0.0, 1e3, -3e4])
def test_float32_plane_moments_survive_a_large_offset(offset):
    """Plane statistics in float32 of data far from zero: E[x^2] - E[x]^2 would lose every
    digit of the variance here (offset^2 / var up to 1e9 > 1 / float32 eps)."""
    from sn_det.layers import sn_kernels

    g = torch.Generator().manual_seed(5)
    x32 = (torch.randn(3, 8, 21, 19, generator=g, dtype=torch.double) + offset).float()
    mean, var = sn_kernels.plane_moments(x32)
    planes = x32.double().reshape(24, -1)  # the same float32 values, reduced in float64
    assert_close(var.double().reshape(-1), planes.var(1), 2e-5, "float32 variance")
    # The mean itself can only be as exact as float32 near the offset (a few ulps).
    mean_err = (mean.double().reshape(-1) - planes.mean(1)).abs().max().item()
    assert mean_err <= 1e-6 * max(abs(offset), 1.0), mean_err


def _offset_error(m64, shape, offset, training, seed=3):
    """Largest relative error of a float32 SN on x + offset against float64 SN on x, over the
    output and every gradient (SN is invariant to a common offset, so both should agree)."""
    x = random_input(shape, seed=seed).detach()
    x = (x - x.mean()) / x.std()  # unit std: the offset dominates every mean
    dy = torch.randn(shape, dtype=torch.double, generator=torch.Generator().manual_seed(seed + 1))
    params = reference_params(m64)
    x_ref = x.clone().requires_grad_(True)
    rm, rv = (m64.running_mean, m64.running_var) if m64.using_bn else (None, None)
    y_ref, _, _ = reference_switch_norm(x_ref, *params, rm, rv, training=training)
    (y_ref * dy).sum().backward()

    m32 = SwitchNorm2d(shape[1], using_bn=m64.using_bn).train(training)
    m32.load_state_dict(m64.state_dict())
    if m64.using_bn:
        with torch.no_grad():
            m32.running_mean.add_(offset)  # eval mode: the running mean carries the offset too
    x32 = (x + offset).float().requires_grad_(True)
    y = m32(x32)
    (y * dy.float()).sum().backward()
    errors = {"output": (y.double(), y_ref), "input gradient": (x32.grad.double(), x_ref.grad)}
    for name, p, p_ref in zip(
        ["weight", "bias", "mean_weight", "var_weight"],
        [m32.weight, m32.bias, m32.mean_weight, m32.var_weight],
        params,
    ):
        errors[name] = (p.grad.double(), p_ref.grad)
    return {
        k: ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        for k, (a, b) in errors.items()
    }


@pytest.mark.parametrize("path", ["cpu_kernels", "torch_ops"])
@pytest.mark.parametrize("using_bn,training", [(True, True), (True, False), (False, True)])
def test_float32_with_a_large_common_offset_matches_float64(monkeypatch, path, using_bn, training):
    """float32 SN(x + 1e4) against float64 SN(x) for unit-std x: the published formula
    mean(v + m^2) - mean^2 loses every digit here; the centred forms keep the error near
    the float32 rounding of the input itself (~5e-4 at 1e4)."""
    from sn_det.layers import sn_kernels

    if path == "torch_ops":
        monkeypatch.setattr(sn_kernels, "_C", None)
    m64 = make_layer(6, using_bn=using_bn).train(training)
    errors = _offset_error(m64, (3, 6, 9, 7), 1e4, training)
    assert max(errors.values()) <= 4e-3, errors


@pytest.mark.parametrize("path", ["cpu_kernels", "torch_ops"])
def test_variances_are_never_negative(monkeypatch, path):
    """Constant planes around a huge offset: every variance is exactly 0, never below."""
    from sn_det.layers import sn_kernels
    from sn_det.layers.sn_mixing import batch_moments, mix_forward

    if path == "torch_ops":
        monkeypatch.setattr(sn_kernels, "_C", None)
    g = torch.Generator().manual_seed(0)
    x = (3e4 + torch.randn(4, 5, 1, 1, generator=g) * 1e-3).expand(4, 5, 3, 3).contiguous()
    mean_in, var_in = sn_kernels.plane_moments(x)
    mb, vb = batch_moments(mean_in, var_in)
    m = SwitchNorm2d(5)
    mixed = mix_forward(
        mean_in, var_in, m.weight, m.bias, m.mean_weight, m.var_weight, 1e-5, (mb, vb)
    )
    for name, v in [("var_in", var_in), ("var_bn", vb), ("var_ln", mixed.var_ln)]:
        assert (v >= 0).all(), name


@pytest.mark.parametrize("cls_name", ["SwitchNorm2d", "SyncSwitchNorm2d"])
@pytest.mark.parametrize(
    "using_bn,training,moving",
    [(True, True, True), (True, True, False), (True, False, True), (False, True, True)],
)
def test_torchscript_matches_reference(tmp_path, cls_name, using_bn, training, moving):
    """torch.jit.script of the layer (the deployment path detectron2's scripting_with_instances
    takes): forward, gradients and running statistics against the float64 reference, and a
    save/load round trip."""
    import sn_det.layers as layers

    m = make_layer(5, using_bn=using_bn, moving=moving, cls=getattr(layers, cls_name))
    m.train(training)
    m.momentum = 0.9
    params = reference_params(m)
    rm = m.running_mean.clone() if using_bn else None
    rv = m.running_var.clone() if using_bn else None
    scripted = torch.jit.script(m)
    x = random_input((3, 5, 4, 6))
    x_ref = x.detach().clone().requires_grad_(True)
    y = scripted(x)
    y_ref, mean_bn, var_bn = reference_switch_norm(x_ref, *params, rm, rv, training=training)
    assert_close(y, y_ref, what="scripted forward")
    y.pow(2).sum().backward()
    y_ref.pow(2).sum().backward()
    assert_close(x.grad, x_ref.grad, what="scripted input gradient")
    for p, p_ref in zip([m.weight, m.bias, m.mean_weight, m.var_weight], params):
        assert_close(p.grad, p_ref.grad, what="scripted parameter gradient")
    if using_bn and training:
        if moving:
            rm, rv = 0.9 * rm + 0.1 * mean_bn, 0.9 * rv + 0.1 * var_bn
        else:
            rm, rv = rm + mean_bn, rv + mean_bn**2 + var_bn
        assert_close(m.running_mean, rm, what="scripted running_mean")
        assert_close(m.running_var, rv, what="scripted running_var")
    path = str(tmp_path / "sn.pt")
    torch.jit.save(scripted, path)
    loaded = torch.jit.load(path).eval()
    assert_close(loaded(x.detach()), m.eval()(x.detach()), what="loaded scripted module")


def test_torchscript_half_input_and_empty_batch():
    m = torch.jit.script(SwitchNorm2d(4).train())
    y = m(torch.randn(2, 4, 3, 3).to(torch.bfloat16) + 50)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    # An empty batch (a mask head without foreground ROIs) passes without a warning, as in
    # eager mode; var_mean over no element warned "degrees of freedom is <= 0" here.
    # Neither an empty batch nor empty planes move the running statistics.
    before = (m.running_mean.clone(), m.running_var.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shape in [(0, 4, 3, 3), (2, 4, 0, 3)]:
            assert m(torch.zeros(shape)).shape == shape
    assert torch.equal(m.running_mean, before[0]) and torch.equal(m.running_var, before[1])


class _SoftmaxOutsideSN(SwitchNorm2d):
    """SN whose mixing weights are computed outside the kernels (the probability mode that
    Sparse SN uses), here with the same softmax: must equal SwitchNorm2d exactly."""

    switch_probabilities = True

    def _switch_inputs(self):
        return torch.softmax(self.mean_weight, 0), torch.softmax(self.var_weight, 0)


@pytest.mark.parametrize("path", ["cpu_kernels", "torch_ops", "triton"])
@pytest.mark.parametrize("using_bn,training", [(True, True), (True, False), (False, True)])
def test_probability_mode_matches_logits(monkeypatch, path, using_bn, training):
    from sn_det.layers import sn_kernels, switchable_norm

    if path == "torch_ops":
        monkeypatch.setattr(sn_kernels, "_C", None)
    device = "cpu"
    if path == "triton":
        pytest.importorskip("triton")
        skip_if_interpreter_broken()
        if torch.cuda.is_available():
            device = "cuda"  # compiled kernels take GPU tensors only
        else:
            monkeypatch.setattr(switchable_norm, "TRITON_ON_CPU", True)  # the interpreter
    dtype = torch.float32 if path == "triton" else torch.double
    ref = make_layer(6, using_bn=using_bn).to(dtype).train(training).to(device)
    probs = _SoftmaxOutsideSN(6, using_bn=using_bn).to(dtype).train(training).to(device)
    probs.load_state_dict(ref.state_dict())
    x = random_input((3, 6, 5, 4)).detach().to(dtype).to(device)
    outs = []
    for m in (ref, probs):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        y.pow(2).sum().backward()
        outs.append([y, xi.grad, m.mean_weight.grad, m.var_weight.grad, m.weight.grad])
    rtol = 2e-5 if dtype == torch.float32 else 1e-9
    for a, b, what in zip(*outs, ["y", "dx", "d mean_weight", "d var_weight", "d weight"]):
        assert_close(a.double(), b.double(), rtol, what)
