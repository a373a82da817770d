"""The CUDA path: gsplat's fused rasteriser (gsplat 1.5.3 `rasterization`).

Only ever called with CUDA tensors: gsplat's CUDA ops fail on a CPU device.
Colours arrive already evaluated (SH done in sh.py, which also handles rotated splats),
so gsplat sees post-activation RGB. Depth comes from render_mode "RGB+ED" (expected depth,
already divided by alpha by gsplat).
"""

from __future__ import annotations

import torch


def rasterize_gsplat(
    means: torch.Tensor,
    covars: torch.Tensor | None,
    quats: torch.Tensor | None,
    scales: torch.Tensor | None,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    background: torch.Tensor,
    eps2d: float = 0.3,
    tile_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns rgb (H, W, 3), alpha (H, W, 1), expected depth (H, W, 1), all float32."""
    from gsplat import rasterization

    f32 = torch.float32
    render, alpha, _ = rasterization(
        means=means.to(f32).contiguous(),
        quats=None if quats is None else quats.to(f32).contiguous(),
        scales=None if scales is None else scales.to(f32).contiguous(),
        opacities=opacities.to(f32).contiguous(),
        colors=colors.to(f32).contiguous(),
        viewmats=viewmat.to(f32)[None].contiguous(),
        Ks=K.to(f32)[None].contiguous(),
        width=width,
        height=height,
        near_plane=near,
        far_plane=far,
        eps2d=eps2d,
        tile_size=tile_size,
        backgrounds=background.to(f32)[None].contiguous(),
        render_mode="RGB+ED",
        rasterize_mode="classic",
        covars=None if covars is None else covars.to(f32).contiguous(),
    )
    return render[0, ..., :3], alpha[0], render[0, ..., 3:4]
