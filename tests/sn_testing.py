"""Helpers shared by the layer tests: random float64 layers and inputs, and a relative
error check. The expected values always come from sn_reference.py, never from here."""

import torch

from sn_det.layers import SwitchNorm2d

RTOL = 1e-9


def assert_close(actual, expected, rtol=RTOL, what=""):
    """Relative error measured against the largest magnitude, so tiny entries don't dominate."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    if expected.numel() == 0:
        return
    scale = expected.abs().max().clamp_min(1e-12)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"


def make_layer(c, using_bn=True, moving=True, last_gamma=False, seed=0, cls=SwitchNorm2d):
    """A float64 ``cls`` layer with random (non-default) parameters and running statistics, so
    every term of the mix and every gradient path carries weight."""
    g = torch.Generator().manual_seed(seed)
    m = cls(c, using_bn=using_bn, using_moving_average=moving, last_gamma=last_gamma)
    m = m.double()
    with torch.no_grad():
        if not last_gamma:
            m.weight.copy_(torch.rand(c, generator=g, dtype=torch.double) + 0.5)
        m.bias.copy_(torch.randn(c, generator=g, dtype=torch.double))
        m.mean_weight.copy_(torch.randn(m.mean_weight.shape, generator=g, dtype=torch.double))
        m.var_weight.copy_(torch.randn(m.var_weight.shape, generator=g, dtype=torch.double))
        if using_bn:
            m.running_mean.copy_(torch.randn(c, generator=g, dtype=torch.double))
            m.running_var.copy_(torch.rand(c, generator=g, dtype=torch.double) + 0.5)
    return m


def reference_params(m):
    """Leaf copies of the layer's parameters, for the reference's autograd."""
    return [
        p.detach().clone().requires_grad_(True)
        for p in (m.weight, m.bias, m.mean_weight, m.var_weight)
    ]


def random_input(shape, seed=1):
    g = torch.Generator().manual_seed(seed)
    # Offset and scale per channel so IN, LN and BN statistics differ clearly.
    x = torch.randn(shape, generator=g, dtype=torch.double)
    x = x * (torch.rand(shape[1], generator=g, dtype=torch.double) * 3 + 0.1).view(1, -1, 1, 1)
    return (
        x + torch.randn(shape[1], generator=g, dtype=torch.double).view(1, -1, 1, 1)
    ).requires_grad_(True)


# aten ops that copy a device value to the host (or wait for one to size an output): on a
# GPU each stalls the CPU until the GPU catches up, and none may run under CUDA-graph capture.
HOST_SYNC_OPS = {"_local_scalar_dense", "nonzero", "item", "masked_select", "is_nonzero"}


def dispatched_ops(fn):
    """The aten op names (overload packets) that ``fn()`` dispatches."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = set()

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Record():
        fn()
    return seen


def packed_by_saved_tensor_hooks(layer, x, dy):
    """Shapes of the tensors a training (or eval) forward of ``layer`` saves for backward,
    seen by autograd's saved-tensor hooks, after checking that a backward from the hooks'
    copies gives exactly the plain gradients of x and the parameters."""
    layer(x).backward(dy)
    plain = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    x.grad = None
    layer.zero_grad(set_to_none=True)
    packed = []

    def pack(t):
        packed.append(tuple(t.shape))
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.backward(dy)
    for a, b in zip(plain, [x.grad] + [p.grad for p in layer.parameters()]):
        assert torch.equal(a, b)
    return packed
