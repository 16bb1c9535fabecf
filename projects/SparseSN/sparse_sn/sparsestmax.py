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

Everything is written with torch ops and ``torch.where`` (no data-dependent Python branch),
so there is no host synchronisation on a GPU and autograd gives the gradient: piecewise
smooth, as sparsemax's.
"""

import math

import torch
from torch import Tensor

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
    r = torch.as_tensor(radius, dtype=z.dtype, device=z.device)
    p = sparsemax(z)
    centre = 1.0 / k
    d = p - centre
    dist = d.norm()
    inside = dist < r
    at_centre = dist <= _TINY
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
    constrained = torch.where((pushed >= 0).all(), pushed, edge)
    return torch.where(inside & ~at_centre, constrained, p)
