"""The Triton implementation of SN (sn_det/layers/switch_norm_triton.py) against the plain
float64 reference, through SwitchNorm2d. Without a GPU the kernels run on CPU tensors under
TRITON_INTERPRET=1 (set in conftest.py), so shapes stay small; the same tests run on CUDA."""

import pytest
import torch

from sn_det.layers import SwitchNorm2d, switchable_norm
from sn_reference import reference_switch_norm
from sn_testing import (
    HOST_SYNC_OPS,
    dispatched_ops,
    make_layer,
    packed_by_saved_tensor_hooks,
    reference_params,
)
from triton_interpreter import skip_if_interpreter_broken

triton = pytest.importorskip("triton")
from sn_det.layers import switch_norm_triton  # noqa: E402  (needs triton)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Relative error bounds (largest error over largest magnitude) per input dtype: float32
# arithmetic throughout, and outputs/input gradients rounded to the input's dtype.
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.fixture(autouse=True)
def triton_everywhere(monkeypatch):
    """Send CPU tensors to the Triton kernels too (the interpreter runs them)."""
    skip_if_interpreter_broken()
    monkeypatch.setattr(switchable_norm, "TRITON_ON_CPU", True)


def _rel(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


def _run(
    shape,
    dtype,
    channels_last,
    using_bn=True,
    training=True,
    moving=True,
    frozen=False,
    offset=0.0,
    seed=0,
):
    """Triton SN and the float64 reference on the same (rounded) input; returns the relative
    errors of the output, every gradient and the running statistics."""
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    layer = make_layer(c, using_bn=using_bn, moving=moving, seed=seed).float().train(training)
    layer.momentum = 0.9
    if frozen:
        layer.freeze()
    ref_params = reference_params(layer)
    rm = layer.running_mean.double().clone() if using_bn else None
    rv = layer.running_var.double().clone() if using_bn else None
    scale = torch.rand(c, generator=g, dtype=torch.double) * 3 + 0.1
    x64 = torch.randn(shape, generator=g, dtype=torch.double) * scale.view(1, -1, 1, 1)
    x64 = x64 + torch.randn(c, generator=g, dtype=torch.double).view(1, -1, 1, 1) + offset
    x = x64.to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.double).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.to(DEVICE).requires_grad_(True)
    layer = layer.to(DEVICE)
    assert switchable_norm._triton_function(x) is not None

    x_ref = x.detach().double().cpu().requires_grad_(True)
    y_ref, mean_bn, var_bn = reference_switch_norm(
        x_ref, *ref_params, rm, rv, training=training and not frozen
    )
    y = layer(x)
    assert y.dtype == dtype and y.shape == x.shape
    if channels_last:
        assert y.is_contiguous(memory_format=torch.channels_last)
    (y.double() * dy.double().to(DEVICE)).sum().backward()
    (y_ref * dy.double()).sum().backward()
    errors = {"output": _rel(y.cpu(), y_ref), "input gradient": _rel(x.grad.cpu(), x_ref.grad)}
    if not frozen:
        for name, p, p_ref in zip(
            ["weight", "bias", "mean_weight", "var_weight"],
            [layer.weight, layer.bias, layer.mean_weight, layer.var_weight],
            ref_params,
        ):
            errors[name] = _rel(p.grad.cpu(), p_ref.grad)
    if using_bn and training and not frozen:
        if moving:
            rm, rv = 0.9 * rm + 0.1 * mean_bn, 0.9 * rv + 0.1 * var_bn
        else:
            rm, rv = rm + mean_bn, rv + mean_bn**2 + var_bn
    if using_bn:
        errors["running_mean"] = _rel(layer.running_mean.cpu(), rm)
        errors["running_var"] = _rel(layer.running_var.cpu(), rv)
    return errors


SHAPES = [(2, 5, 3, 7), (3, 4, 1, 1), (1, 3, 5, 5), (4, 33, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_matches_reference(shape, dtype, channels_last):
    if dtype == torch.bfloat16 and DEVICE == "cpu" and triton.__version__.startswith("2."):
        pytest.skip("Triton 2.x's interpreter has no bfloat16 (numpy has none); runs on CUDA")
    errors = _run(shape, dtype, channels_last)
    assert max(errors.values()) <= TOL[dtype], errors


@pytest.mark.parametrize(
    "mode",
    [
        dict(training=False),
        dict(using_bn=False),
        dict(frozen=True),
        dict(moving=False),
        dict(using_bn=False, training=False),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_modes_match_reference(mode, channels_last):
    errors = _run((2, 6, 4, 3), torch.float32, channels_last, **mode)
    assert max(errors.values()) <= TOL[torch.float32], errors


@pytest.mark.parametrize(
    "shape, mode",
    [
        ((3, 300, 2, 2), dict()),  # C over the (N, C) kernels' row tile of 128: three chunks
        ((9, 130, 1, 2), dict(training=False)),  # more samples than a row tile holds
        ((17, 70, 2, 1), dict(using_bn=False)),
    ],
)
def test_many_channels_and_samples_match_reference(shape, mode):
    errors = _run(shape, torch.float32, False, **mode)
    assert max(errors.values()) <= TOL[torch.float32], errors


def test_batch_average_mode_counts_batches():
    layer = SwitchNorm2d(3, using_moving_average=False).to(DEVICE)
    layer.reset_batch_average()
    with torch.no_grad():
        for _ in range(2):
            layer(torch.randn(2, 3, 4, 4, device=DEVICE))
    assert layer.finalize_batch_average() == 2


@pytest.mark.parametrize("channels_last", [False, True])
def test_long_planes_split_across_programs(channels_last):
    """Few planes of many positions: the plane reductions are split along H*W and merged as
    parallel variances (INTERPRETER_TARGET_PROGRAMS makes this happen on small shapes)."""
    shape = (1, 2, 41, 53)  # 2173 positions: 3 chunks of 1024, not a multiple of the block
    x = torch.zeros(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not torch.cuda.is_available():
        assert switch_norm_triton._plan_of(x).n_splits > 1
    errors = _run(shape, torch.float32, channels_last, offset=50.0)
    # The switch-logit gradients are small differences of terms carrying the offset: their
    # float32 error (~1e-4 here) is the only one above the plain float32 level.
    assert max(errors.values()) <= 3e-4, errors
    assert max(v for k, v in errors.items() if "weight" not in k or k == "weight") <= 2e-5


def test_large_offset_matches_float64_of_the_unshifted_input():
    """float32 SN(x + 1e4) matches float64 SN(x): the variances never cancel."""
    errors = _run((2, 6, 9, 7), torch.float32, False, offset=1e4)
    # The reference sees the same rounded input, so what is left is the kernels' own error.
    assert max(errors.values()) <= 4e-3, errors


def test_eight_launches_per_training_step(monkeypatch):
    """Forward + backward of a training step in eight Triton kernel launches, each asking for
    fused multiply-adds itself (Triton 3.10 turns its default to unfused)."""
    options = []
    launches = _record_launches(monkeypatch, options)
    layer = SwitchNorm2d(8).to(DEVICE)
    x = torch.randn(2, 8, 5, 5, device=DEVICE, requires_grad=True)
    layer(x).sum().backward()
    assert len(launches) == 8, launches
    assert [o.get("enable_fp_fusion") for o in options] == [True] * 8, options


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_backward_state_goes_through_saved_tensor_hooks(mode):
    """Everything the backward reads is a saved tensor: x, the four parameters and the (N, C)
    state (plus the BN moments), so hooks see it, and gradients from the hooks' copies equal
    the plain ones."""
    layer = SwitchNorm2d(8).to(DEVICE).train(mode == "train")
    x = torch.randn(2, 8, 5, 5, device=DEVICE, requires_grad=True)
    packed = packed_by_saved_tensor_hooks(layer, x, torch.randn(2, 8, 5, 5, device=DEVICE))
    assert packed[0] == (2, 8, 5, 5) and len(packed) == 13, packed


def _record_launches(monkeypatch, options=None):
    """[(kernel name, grid)] of every Triton launch from now on; ``options``, a list, gets the
    keyword arguments of each launch."""
    launches = []

    class Recording:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches.append((self.name, tuple(grid)))
            launch = self.kernel[grid]

            def record(*args, **kwargs):
                if options is not None:
                    options.append(kwargs)
                return launch(*args, **kwargs)

            return record

    for name in dir(switch_norm_triton):
        if name.startswith("_") and name.endswith("_kernel"):
            obj = getattr(switch_norm_triton, name)
            monkeypatch.setattr(switch_norm_triton, name, Recording(name, obj))
    return launches


@pytest.mark.parametrize("mode", ["train", "batch_average", "eval"])
def test_no_host_synchronisation_in_a_step(mode):
    """The host code around the kernels reads no device value (on a GPU that would stall
    the CPU every layer and break CUDA-graph capture)."""
    layer = SwitchNorm2d(4, using_moving_average=mode != "batch_average").to(DEVICE)
    layer.train(mode != "eval")
    x = torch.randn(2, 4, 3, 3, device=DEVICE, requires_grad=True)

    def step():
        layer(x).sum().backward()

    step()
    ops = dispatched_ops(step)
    assert not ops & HOST_SYNC_OPS, ops & HOST_SYNC_OPS


@pytest.mark.parametrize("shape", [(0, 4, 3, 3), (2, 4, 0, 5), (2, 4, 3, 0)])
def test_empty_inputs_take_the_torch_path(shape):
    # No samples, or empty planes (H*W == 0, which once divided by zero in the split sizes).
    x = torch.zeros(shape, device=DEVICE, requires_grad=True)
    assert switchable_norm._triton_function(x) is None
    layer = SwitchNorm2d(4).to(DEVICE)
    y = layer(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape


def test_kernels_run_on_the_inputs_gpu(monkeypatch):
    """Triton launches on the current CUDA device: a tensor on another GPU switches to it
    for the launches, and one on the current GPU (or on the CPU) changes nothing."""
    cuda1 = torch.device("cuda", 1)

    class OnGpu1:
        is_cuda = True
        device = cuda1

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    ctx = switch_norm_triton.on_device_of(OnGpu1())
    assert isinstance(ctx, torch.cuda.device) and ctx.idx == 1
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert not isinstance(switch_norm_triton.on_device_of(OnGpu1()), torch.cuda.device)
    assert not isinstance(switch_norm_triton.on_device_of(torch.ones(1)), torch.cuda.device)


def test_elementwise_passes_keep_every_grid_axis_but_the_first_small(monkeypatch):
    """CUDA allows 2^31 - 1 blocks on grid axis 0 but 65535 on axes 1 and 2. A large
    channels_last map has more position blocks than that (C=64 gives 32-position blocks:
    over 65535 past 2^21 positions), so only axis 0 may grow with the map."""
    launches = _record_launches(monkeypatch)
    x = torch.randn(1, 64, 40, 40, device=DEVICE).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    SwitchNorm2d(64).to(DEVICE)(x).sum().backward()
    grids = dict(launches)
    assert len(grids) == 8
    # The reductions' axis 1 holds the splits along H*W: at most the target program count.
    target = switch_norm_triton.INTERPRETER_TARGET_PROGRAMS if DEVICE == "cpu" else 65535
    assert all(g <= target for grid in grids.values() for g in grid[1:]), grids
    # 1600 positions in blocks of 32, one channel block: 50 programs along axis 0.
    assert grids["_affine_kernel"] == (50,) and grids["_backward_dx_kernel"] == (50,)


def test_unsupported_layouts_and_dtypes_are_declined():
    x = torch.randn(2, 4, 6, 6)
    assert switch_norm_triton.supports(x)
    assert not switch_norm_triton.supports(x.double())
    assert switch_norm_triton.supports(x[:, :, :, ::2])  # one stride walks H*W
    assert not switch_norm_triton.supports(x[:, :, ::2, :])  # no single stride does


@pytest.mark.parametrize("case", ["every other column", "gradient in channels_last"])
def test_other_layouts_give_the_numbers_of_contiguous_tensors(case):
    """Each tensor is walked by its own strides: an input that is one strided walk per plane
    but not dense (its output and dx are dense, so their strides differ from the input's),
    and an output gradient in another layout than the input, give exactly what contiguous
    tensors give."""
    g = torch.Generator().manual_seed(3)
    wide = torch.randn(2, 6, 5, 8, generator=g).to(DEVICE)
    dy = torch.randn(2, 6, 5, 4, generator=g).to(DEVICE)
    if case == "every other column":
        x, dy_used = wide[:, :, :, ::2], dy
        assert not x.is_contiguous() and switch_norm_triton.supports(x)
    else:
        x = wide[:, :, :, :4].contiguous()
        dy_used = dy.contiguous(memory_format=torch.channels_last)
    results = []
    for x_in, dy_in in [(x, dy_used), (x.contiguous(), dy.contiguous())]:
        layer = make_layer(6).float().to(DEVICE)
        x_in = x_in.detach().requires_grad_(True)
        y = layer(x_in)
        y.backward(dy_in)
        results.append([y, x_in.grad, layer.running_mean, layer.running_var])
        results[-1] += [p.grad for p in layer.parameters()]
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", ["channels_last", "every other column"])
def test_backward_walks_x_as_the_saved_tensor_hooks_return_it(case):
    """Saved-tensor hooks may return x in another layout than the forward saw (a contiguous
    copy, as save_on_cpu(pin_memory=True) makes of channels_last and non-dense tensors): the
    backward walks the x it gets, and the gradients equal those without hooks."""
    g = torch.Generator().manual_seed(4)
    wide = torch.randn(2, 12, 5, 6, generator=g).to(DEVICE)
    if case == "channels_last":
        x = wide[:, :6].contiguous(memory_format=torch.channels_last)
    else:
        x = wide[:, ::2]  # one strided walk per plane, not dense
    dy = torch.randn(x.shape, generator=g).to(DEVICE)
    grads = []
    for hooks in (False, True):
        layer = make_layer(6).float().to(DEVICE)
        x_in = x.detach().requires_grad_(True)
        if hooks:
            with torch.autograd.graph.saved_tensors_hooks(lambda t: t.contiguous(), lambda t: t):
                y = layer(x_in)
        else:
            y = layer(x_in)
        y.backward(dy)
        grads.append([x_in.grad] + [p.grad for p in layer.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "sizes", [(6, 6, 5, 5, 2), (64, 32, 3), (33,), (31, 1, 96, 2), (2 * 256, 256, 256, 2, 2)]
)
def test_work_buffers_are_aligned_pieces_of_one_allocation(sizes):
    """The float32 work buffers of a direction come from one allocation, each piece of its
    exact size at a multiple of 128 bytes from the start (Triton specializes pointers on
    16-byte alignment, as a fresh allocation has it), none overlapping another."""
    pieces = switch_norm_triton._carve(switch_norm_triton._layout(*sizes), torch.device("cpu"))
    assert [p.numel() for p in pieces] == list(sizes)
    base = pieces[0].untyped_storage().data_ptr()
    offsets = [(p.data_ptr() - base) // 4 for p in pieces]
    assert all(p.untyped_storage().data_ptr() == base for p in pieces)
    assert all(o % 32 == 0 for o in offsets), offsets
    assert all(o + n <= nxt for o, n, nxt in zip(offsets, sizes, offsets[1:])), offsets


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "every other column", "w=1"])
def test_a_call_plan_holds_the_strides_of_its_tensors(layout):
    """The per-shape plan (computed once, cached) has the input's walk strides and those of
    the output empty_like gives, which differ from the input's for a non-dense input."""
    x = torch.randn(2, 6, 5, 8)
    x = {
        "contiguous": x,
        "channels_last": x.contiguous(memory_format=torch.channels_last),
        "every other column": x[:, :, :, ::2],
        "w=1": x[:, :, :, :1],
    }[layout]
    plan = switch_norm_triton._plan_of(x)
    same_walk = torch.empty_strided(x.shape, x.stride())
    assert plan is switch_norm_triton._plan_of(same_walk)  # computed once per shape, strides
    assert plan.x_strides == switch_norm_triton._plane_strides(x)
    assert plan.y_strides == switch_norm_triton._plane_strides(torch.empty_like(x))
    assert switch_norm_triton._plan_of(torch.randn(2, 4, 6, 6)[:, :, ::2, :]) is None


def test_bfloat16_goes_to_the_kernels_from_sm80_only():
    supported = switch_norm_triton.dtype_supported
    assert supported(torch.bfloat16, None)  # CPU tensors: the interpreter
    assert not supported(torch.bfloat16, (7, 5)) and not supported(torch.bfloat16, (7, 0))
    assert supported(torch.bfloat16, (8, 0)) and supported(torch.bfloat16, (9, 0))
    for dtype in (torch.float32, torch.float16):
        assert supported(dtype, (7, 5)) and supported(dtype, None)
    assert not supported(torch.float64, (9, 0)) and not supported(torch.float64, None)


# ---------------------------------------------------------------- SyncSwitchNorm2d, 2 ranks
SYNC_CASES = [("1+2", (1, 2), True), ("0+2", (0, 2), True), ("1+2 without BN", (1, 2), False)]
SYNC_SHAPE = (6, 5, 4)  # C, H, W


def _sync_batch(n):
    g = torch.Generator().manual_seed(11)
    x = torch.randn((n, *SYNC_SHAPE), generator=g, dtype=torch.double) * 2 + 3
    dy = torch.randn((n, *SYNC_SHAPE), generator=g, dtype=torch.double)
    return x, dy


def _sync_worker(rank, world_size):
    """Each case on this rank's slice, through the Triton kernels (a rank without samples
    takes the torch-ops path: both must meet in the same collectives). On a GPU machine both
    ranks share its GPU (gloo moves CUDA tensors through the host); results come back on
    the CPU."""
    from sn_det.layers import SyncSwitchNorm2d

    switchable_norm.TRITON_ON_CPU = DEVICE == "cpu"
    out = {}
    for name, counts, using_bn in SYNC_CASES:
        layer = make_layer(SYNC_SHAPE[0], using_bn=using_bn, cls=SyncSwitchNorm2d)
        layer = layer.float().to(DEVICE)
        layer.momentum = 0.9
        start, stop = sum(counts[:rank]), sum(counts[: rank + 1])
        x_all, dy_all = _sync_batch(sum(counts))
        x = x_all[start:stop].float().to(DEVICE).requires_grad_(True)
        y = layer(x)
        (y * dy_all[start:stop].float().to(DEVICE)).sum().backward()
        out[name] = dict(
            y=y.detach().cpu(),
            dx=x.grad.cpu(),
            grads=[p.grad.cpu() for p in layer.parameters()],
            buffers={k: v.cpu() for k, v in layer.state_dict().items() if "running" in k},
        )
    # A training step of a rank with samples reads nothing back to the host: on GPUs a read
    # per layer would stall every rank's CPU until its GPU caught up.
    # Moving average and batch average alike (a rank with samples knows the batch is not
    # empty anywhere).
    out["host syncs"] = set()
    for moving in (True, False):
        layer = make_layer(SYNC_SHAPE[0], moving=moving, cls=SyncSwitchNorm2d).float().to(DEVICE)
        x = _sync_batch(3)[0][rank : rank + 1 + rank].float().to(DEVICE).requires_grad_(True)
        out["host syncs"] |= dispatched_ops(lambda: layer(x).sum().backward()) & HOST_SYNC_OPS
    return out


def test_sync_switch_norm_on_triton_matches_the_whole_batch_reference():
    from distributed import run_distributed

    results = run_distributed(_sync_worker, 2, timeout=240)
    for name, counts, using_bn in SYNC_CASES:
        layer = make_layer(SYNC_SHAPE[0], using_bn=using_bn).float()
        params = reference_params(layer)
        params = [p.detach().double().requires_grad_(True) for p in params]
        x, dy = _sync_batch(sum(counts))
        x = x.float().double().requires_grad_(True)
        y_ref, mean_bn, var_bn = reference_switch_norm(x, *params, training=True)
        (y_ref * dy.float().double()).sum().backward()
        bounds = [0, counts[0], sum(counts)]
        for rank in range(2):
            rows = slice(bounds[rank], bounds[rank + 1])
            if counts[rank]:
                assert _rel(results[rank][name]["y"], y_ref[rows].detach()) <= 2e-5, name
                assert _rel(results[rank][name]["dx"], x.grad[rows]) <= 2e-5, name
        for i, p in enumerate(params):
            summed = results[0][name]["grads"][i] + results[1][name]["grads"][i]
            assert _rel(summed, p.grad) <= 2e-5, (name, i)
        if using_bn:
            expected = 0.9 * layer.running_var.double() + 0.1 * var_bn.detach()
            for rank in range(2):
                assert _rel(results[rank][name]["buffers"]["running_var"], expected) <= 2e-5
    assert results[0]["host syncs"] == set() and results[1]["host syncs"] == set()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_training_step_under_cuda_graph_capture():
    """A forward + backward of conv + SN captured once as a CUDA graph and replayed on new
    data gives eager's loss, gradients and running statistics (no host sync in the layer)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), SwitchNorm2d(8)).cuda()
    static_x = torch.randn(2, 3, 16, 16, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles) outside the capture
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            model(static_x).pow(2).sum().backward()
    torch.cuda.current_stream().wait_stream(side)
    model.zero_grad(set_to_none=True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = model(static_x).pow(2).sum()
        static_loss.backward()

    eager = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), SwitchNorm2d(8)).cuda()
    eager.load_state_dict(model.state_dict())
    new_x = torch.randn_like(static_x) * 2 + 1
    static_x.copy_(new_x)
    graph.replay()
    loss = eager(new_x).pow(2).sum()
    loss.backward()
    torch.cuda.synchronize()
    assert _rel(static_loss, loss.double()) <= 1e-5
    for (name, p), q in zip(model.named_parameters(), eager.parameters()):
        assert _rel(p.grad, q.grad.double()) <= 1e-4, name
    for name in ("running_mean", "running_var"):
        assert _rel(getattr(model[1], name), getattr(eager[1], name).double()) <= 1e-5, name
