"""sparsemax and sparsestmax (Shao, Zhang, Ren, Luo: "SSN: Learning Sparse Switchable
Normalization via SparsestMax", CVPR 2019) for the K = 2 or 3 switch logits of an SN layer.

sparsemax(z) is the Euclidean projection of z onto the probability simplex. sparsestmax(z, r)
is that projection followed by the radius constraint: the result must lie at least r from
the simplex centre u = (1/K, ..., 1/K). When the sparsemax point is closer than r, it is moved
along the ray from u through it onto the sphere of radius r; where that ray leaves the simplex
before reaching the sphere, onto the point of the simplex edge it crosses (the smallest
coordinate set to 0) that lies at distance r from u, on the same side. At r = 0 this is
sparsemax; at r = |vertex - u| = sqrt((K - 1) / K) the only admissible points are the
vertices, so the output is one-hot. A point exactly at u (all logits equal) has no direction
and stays at u.

Two implementations of the same function. On a GPU (and under tracing or torch.compile):
torch ops and ``torch.where``, no data-dependent Python branch, so no host synchronisation,
and autograd gives the gradient, piecewise smooth as sparsemax's. On CPU tensors: the same
cases evaluated on the host in float64 with their Jacobian written out (about 40 tiny torch
ops, each with its autograd node, cost a Sparse SN layer step over 1 ms there, several times
the layer's own statistics). The tests hold both to the same float64 references.
"""

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["sparsemax", "sparsestmax", "vertex_radius"]

_TINY = 1e-12  # keeps sqrt and division away from 0 in branches torch.where discards


def vertex_radius(k: int) -> float:
    """Distance from the centre of the K-simplex to a vertex: the radius at which
    sparsestmax is one-hot."""
    return math.sqrt((k - 1) / k)


def sparsemax(z: Tensor) -> Tensor:
    """Euclidean projection of the (K,) vector ``z`` onto the probability simplex."""
    k = z.numel()
    z_sorted, _ = torch.sort(z, descending=True)
    ranks = torch.arange(1, k + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(0) - 1
    support = (z_sorted - cumsum / ranks) > 0  # a prefix of the sorted order; never empty
    size = support.sum()
    tau = cumsum.gather(0, (size - 1).view(1)) / size.to(z.dtype)
    return torch.clamp(z - tau, min=0)


# CPU tensors take the host implementation (False: the torch-ops one everywhere; the tests
# run both).
HOST_ON_CPU = True


def sparsestmax(z: Tensor, radius) -> Tensor:
    """sparsemax(z) constrained to lie at least ``radius`` from the simplex centre.

    Args:
        z: (K,) logits, K = 2 or 3.
        radius: a float or a 0-d tensor, 0 <= radius <= sqrt((K - 1) / K).

    Returns:
        (K,) probabilities (non-negative, summing to 1).
    """
    k = z.numel()
    if k not in (2, 3):
        raise ValueError(f"sparsestmax is defined here for 2 or 3 logits, got {k}")
    if HOST_ON_CPU and z.is_cpu and _plain_eager():
        return _HostSparsestmax.apply(z, float(radius))
    return _sparsestmax_ops(z, radius)


def _plain_eager() -> bool:
    """Whether this call runs as plain eager code: not traced (jit.trace, make_fx, fake
    tensors and other dispatch modes record or replace ops, and would keep the host form's
    result as a constant), not compiled, not inside a torch.func transform (vmap, grad)."""
    return not (
        torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._are_functorch_transforms_active()
    )


def _sparsestmax_ops(z: Tensor, radius) -> Tensor:
    """:func:`sparsestmax` in torch ops (any device; autograd differentiates it)."""
    k = z.numel()
    r = torch.as_tensor(radius, dtype=z.dtype, device=z.device)
    p = sparsemax(z)
    centre = 1.0 / k
    # The direction from the centre, in the simplex's plane. Equal float32 logits give a p
    # about 2e-8 from the centre along (1, 1, 1), off the plane through rounding alone: pushed
    # along that, the result summed to 0.58. Such a p (all coordinates equal) is the centre.
    d = p - centre
    d = d - d.mean()
    dist = d.norm()
    inside = dist < r
    at_centre = (p.max() - p.min()) <= _TINY
    # Radial push onto the sphere (valid where it stays in the simplex).
    pushed = centre + r * d / dist.clamp_min(_TINY)
    # Where it would leave the simplex: on the edge without the smallest coordinate j (for
    # K = 2 the simplex is that edge), the two others are (t, 1 - t) with t on the side of the
    # larger one. |p - u|^2 there is (t - 1/K)^2 + (1 - t - 1/K)^2 + (K - 2) / K^2 = r^2,
    # solved for t and clamped to [0, 1] (beyond the vertex distance: the vertex).
    # The indices of the two other coordinates, in increasing order, as a device tensor
    # (indexing with argmin's result or a boolean mask would wait for the GPU).
    if k == 3:
        j = torch.argmin(d)
        others = torch.stack([(j == 0).long(), 2 - (j == 2).long()])
    else:
        others = torch.arange(2, device=z.device)
    half = 0.5
    rest = (k - 2) / k**2
    # (t - 1/K)^2 + (1 - t - 1/K)^2 = 2 (t - 1/2)^2 + 2 (1/2 - 1/K)^2
    offset_sq = (r * r - rest - 2 * (0.5 - centre) ** 2) / 2
    offset = torch.sqrt(offset_sq.clamp_min(_TINY))
    two = p.gather(0, others)
    sign = torch.where(two[0] >= two[1], 1.0, -1.0).to(z.dtype)
    t = (half + sign * offset).clamp(0.0, 1.0)
    edge = torch.zeros_like(p).scatter(0, others, torch.stack([t, 1 - t]))
    # A push that lands on the boundary (at the vertex radius with the two smaller logits
    # tied, onto a vertex) is the edge case: there the output is constant in z.
    constrained = torch.where((pushed > _TINY).all(), pushed, edge)
    return torch.where(inside & ~at_centre, constrained, p)


def _host_sparsemax(z):
    """sparsemax of the list ``z`` (floats) and its Jacobian dp/dz as lists, with the
    torch-ops version's conventions at the boundaries: the support is the sorted prefix
    (z_(j) - (cumsum_j - 1) / j > 0), and a coordinate passes gradient where z_i - tau >= 0
    (clamp's rule)."""
    k = len(z)
    desc = sorted(z, reverse=True)
    cumsum, size, tau = 0.0, 0, 0.0
    for j, v in enumerate(desc, 1):
        cumsum += v
        if v - (cumsum - 1) / j > 0:
            size, tau = j, (cumsum - 1) / j
    # The support as indices: the `size` largest entries (their order among equals does not
    # change tau, and a tied entry just outside the prefix is at z_i - tau == 0 anyway).
    order = sorted(range(k), key=lambda i: -z[i])
    support = set(order[:size])
    p = [max(v - tau, 0.0) for v in z]
    jac = [
        [(float(i == j) - (j in support) / size) if z[i] - tau >= 0 else 0.0 for j in range(k)]
        for i in range(k)
    ]
    return p, jac


def _host_sparsestmax(z, r):
    """:func:`sparsestmax` of the list ``z`` (floats) at radius ``r``, and dq/dz: the cases
    of the torch-ops version, in float64."""
    k = len(z)
    p, jac = _host_sparsemax(z)
    centre = 1.0 / k
    d = [v - centre for v in p]
    shift = sum(d) / k  # in the simplex's plane (see the torch-ops version)
    d = [v - shift for v in d]
    dist = math.sqrt(sum(v * v for v in d))
    if not (dist < r and max(p) - min(p) > _TINY):
        return p, jac
    pushed = [centre + r * v / dist for v in d]
    if all(v > _TINY for v in pushed):
        # q = u + r d / |d|: dq/dp = r / |d| (I - d d^T / |d|^2), then dp/dz.
        proj = [[r / dist * (float(i == j) - d[i] * d[j] / dist**2) for j in range(k)]
                for i in range(k)]  # fmt: skip
        return pushed, [[sum(proj[i][m] * jac[m][j] for m in range(k)) for j in range(k)]
                        for i in range(k)]  # fmt: skip
    # On the edge without the smallest coordinate (argmin's first index on ties): a point
    # fixed by r and by which of the other two is larger, so locally constant in z.
    low = min(range(k), key=lambda i: (d[i], i)) if k == 3 else None
    a, b = [i for i in range(k) if i != low]
    offset_sq = (r * r - (k - 2) / k**2 - 2 * (0.5 - centre) ** 2) / 2
    offset = math.sqrt(max(offset_sq, _TINY))
    t = min(max(0.5 + (offset if p[a] >= p[b] else -offset), 0.0), 1.0)
    q = [0.0] * k
    q[a], q[b] = t, 1 - t
    return q, [[0.0] * k for _ in range(k)]


class _HostSparsestmax(torch.autograd.Function):
    """sparsestmax of a CPU (K,) tensor, computed on the host with its Jacobian."""

    @staticmethod
    def forward(ctx, z, r: float):
        q, jac = _host_sparsestmax(z.tolist(), r)
        ctx.jac = jac
        return z.new_tensor(q)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        g, jac = grad.tolist(), ctx.jac
        k = len(g)
        dz = [sum(g[i] * jac[i][j] for i in range(k)) for j in range(k)]
        return grad.new_tensor(dz), None
