"""Kolmogorov-Arnold layers with cubic B-spline activations (our own implementation).

y_j = sum_i [ a_ij * silu(x_i) + b_ij * sum_k c_ijk * B_k(x_i) ]

The B_k are B-splines of `order` on a uniform grid of `grid_size` intervals over `grid_range`,
with the knot vector extended by `order` knots on each side, so that the grid_size + order bases
form a partition of unity everywhere inside `grid_range`. Inputs are expected inside the grid
range (the fields put a tanh in front of every layer).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def uniform_knots(grid_size: int, order: int, grid_range=(-1.0, 1.0)) -> torch.Tensor:
    """grid_size + 2*order + 1 knots, uniform, extended by `order` intervals on each side."""
    lo, hi = grid_range
    h = (hi - lo) / grid_size
    return lo + h * torch.arange(-order, grid_size + order + 1, dtype=torch.float32)


def bspline_bases(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """B-spline bases of degree `order` at x, on uniform `knots`, by the Cox-de Boor recursion.

    Only the order+1 bases that are non-zero at x are computed (the triangular form of the
    recursion over the knot span holding x), then scattered into the dense layout, which keeps
    the cost per input at O(order^2) instead of O(n_knots * order).

    x: (..., D); knots: (K,) uniform, from `uniform_knots` (K = grid_size + 2*order + 1).
    Returns (..., D, grid_size + order): the bases whose support meets the grid range. They sum
    to one inside the grid range; outside it the end spans' polynomials extend (callers keep the
    inputs inside, e.g. with tanh).
    """
    n_basis = knots.numel() - 1 - order  # grid_size + order
    t0 = float(knots[0])
    h = float(knots[1] - knots[0])
    s = (x - t0) / h  # knot coordinates: knot i sits at s = i
    span = torch.floor(s.detach()).clamp(order, n_basis - 1)  # span index j, t_j <= x < t_j+1
    u = s - span
    # right[r] = t_(j+r) - x and left[r] = x - t_(j+1-r), in knot units.
    right = [r - u for r in range(order + 1)]
    left = [u + (r - 1) for r in range(order + 1)]
    basis = [torch.ones_like(u)]
    for p in range(1, order + 1):
        saved = torch.zeros_like(u)
        nxt = []
        for r in range(p):
            temp = basis[r] / p  # uniform knots: right[r+1] + left[p-r] == p
            nxt.append(saved + right[r + 1] * temp)
            saved = left[p - r] * temp
        nxt.append(saved)
        basis = nxt
    local = torch.stack(basis, dim=-1)  # (..., D, order+1): bases j-order .. j
    index = (span.long() - order).unsqueeze(-1) + torch.arange(order + 1, device=x.device)
    dense = torch.zeros(*x.shape, n_basis, dtype=x.dtype, device=x.device)
    return dense.scatter(-1, index, local)


class KANLayer(nn.Module):
    """One Kolmogorov-Arnold layer: a learned silu base path plus learned spline activations."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, order: int = 3,
                 grid_range=(-1.0, 1.0), init_scale: float = 1.0):
        super().__init__()
        if grid_size < 1 or order < 0:
            raise ValueError("grid_size must be >= 1 and order >= 0")
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.order = grid_size, order
        self.grid_range = tuple(float(v) for v in grid_range)
        self.register_buffer("knots", uniform_knots(grid_size, order, self.grid_range), persistent=False)
        n_basis = grid_size + order
        bound = init_scale / math.sqrt(in_features)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.spline_scale = nn.Parameter(torch.ones(out_features, in_features))
        self.spline_coef = nn.Parameter(0.1 * init_scale * torch.randn(out_features, in_features, n_basis)
                                        / math.sqrt(in_features))

    def bases(self, x: torch.Tensor) -> torch.Tensor:
        return bspline_bases(x, self.knots, self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = nn.functional.linear(nn.functional.silu(x), self.base_weight)
        b = self.bases(x)  # (..., in, n_basis)
        coef = self.spline_scale.unsqueeze(-1) * self.spline_coef  # (out, in, n_basis)
        spline = b.flatten(-2) @ coef.flatten(1).T
        return base + spline

    def spline_l1(self) -> torch.Tensor:
        """Mean absolute spline coefficient: an L1 sparsity penalty on the learned activations."""
        return self.spline_coef.abs().mean()
