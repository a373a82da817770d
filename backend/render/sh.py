"""Spherical-harmonics colours (degree 0-3) with the view-direction fix for deformed splats.

Evaluation is gsplat's: its torch reference (`gsplat_private.spherical_harmonics_reference`, any device) or its CUDA
kernel `spherical_harmonics` (CUDA tensors only). Coefficients are (N, K, 3) with K bases in
gsplat's order (DC first); colours follow the 3DGS convention rgb = max(SH(d) + 0.5, 0).

A splat rotated by the simulator (polar rotation R of its deformation gradient) must be
lit as in its rest pose, so its SH is looked up with the view direction rotated back, R^T d.
"""

from __future__ import annotations

import math

import torch

from .gsplat_private import spherical_harmonics_reference

MAX_DEGREE = 3


def degree_from_bases(k: int) -> int:
    d = math.isqrt(k) - 1
    if (d + 1) ** 2 != k or not 0 <= d <= MAX_DEGREE:
        raise ValueError(f"SH coefficients must have 1, 4, 9 or 16 bases per channel, got {k}")
    return d


def view_directions(means: torch.Tensor, campos: torch.Tensor, rotations: torch.Tensor | None = None) -> torch.Tensor:
    """Directions camera -> splat (N, 3), optionally into each splat's rest frame (R^T d)."""
    dirs = means - campos
    if rotations is not None:
        dirs = torch.einsum("nji,nj->ni", rotations, dirs)
    return dirs


def sh_to_rgb(sh: torch.Tensor, degree: int, dirs: torch.Tensor, use_cuda_kernel: bool = False) -> torch.Tensor:
    """Colours (N, 3) from SH coefficients (N, K, 3) seen along `dirs` (N, 3, need not be unit)."""
    if use_cuda_kernel:
        from gsplat import spherical_harmonics  # CUDA op: only ever reached with CUDA tensors

        # the kernel is float32-only
        raw = spherical_harmonics(degree, dirs.float(), sh.float()).to(sh.dtype)
    else:
        raw = spherical_harmonics_reference(degree, dirs, sh)
    return torch.clamp_min(raw + 0.5, 0.0)
