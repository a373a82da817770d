"""Brute-force reference compositor: every Gaussian against every pixel, plain autograd.

Readable and slow (memory ~ N * H * W); the tile compositor in `composite.py` is tested
against it. Same rules as gsplat's CUDA rasteriser (see composite.py's docstring); no
tiles, no blocks, no custom backward, no tricks.
"""

from __future__ import annotations

import torch

from .composite import ALPHA_MAX, ALPHA_MIN, T_MIN


def composite_dense(
    means2d: torch.Tensor,  # (N, 2)
    conics: torch.Tensor,  # (N, 3)
    opacities: torch.Tensor,  # (N,)
    colors: torch.Tensor,  # (N, D)
    depths: torch.Tensor,  # (N,) sort key
    visible: torch.Tensor,  # (N,) bool
    width: int,
    height: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns sum_k w_k c_k (H, W, D) and sum_k w_k (H, W, 1)."""
    ids = torch.nonzero(visible).squeeze(1)
    ids = ids[torch.argsort(depths[ids])]  # front to back
    m, con, op, col = means2d[ids], conics[ids], opacities[ids], colors[ids]

    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=m.dtype, device=m.device) + 0.5,
        torch.arange(width, dtype=m.dtype, device=m.device) + 0.5,
        indexing="ij",
    )
    dx = m[:, 0, None, None] - xs  # (N, H, W)
    dy = m[:, 1, None, None] - ys
    A, B, C = (con[:, i, None, None] for i in range(3))
    sigma = 0.5 * (A * dx**2 + C * dy**2) + B * dx * dy
    alpha = torch.clamp(op[:, None, None] * torch.exp(-sigma), max=ALPHA_MAX)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, torch.zeros_like(alpha))

    # T after each Gaussian; a pixel keeps a Gaussian only while that stays above T_MIN
    T_after = torch.cumprod(1.0 - alpha, dim=0)
    T_before = torch.cat([torch.ones_like(T_after[:1]), T_after[:-1]], dim=0)
    keep = T_after > T_MIN
    w = alpha * T_before * keep  # (N, H, W)
    out = torch.einsum("nhw,nd->hwd", w, col)
    return out, w.sum(0)[..., None]
