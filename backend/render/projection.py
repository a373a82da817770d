"""EWA projection of 3D Gaussians to the image, on gsplat's own torch reference code.

gsplat's torch reference projection (`gsplat_private.project_reference`) does the world->camera transform, the
perspective Jacobian (with gsplat's frustum clamp), the 2D blur `eps2d` and the conics.
On top of it we apply the culling gsplat's CUDA kernel applies and its torch twin does not:
opacity-aware radii (extend = min(3.33, sqrt(2 ln(255 * opacity))), Gaussians with opacity
below 1/255 dropped) and non-positive 2D determinants. With that radius, the screen-space
box bounds exactly the region where alpha >= 1/255, so tile culling never changes an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .gsplat_private import project_reference

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
EXTEND_MAX = 3.33


@dataclass
class Projected:
    means2d: torch.Tensor  # (N, 2) pixel coordinates, differentiable
    conics: torch.Tensor  # (N, 3) upper triangle of the inverse blurred 2D covariance, differentiable
    depths: torch.Tensor  # (N,) camera-space z, differentiable
    radii: torch.Tensor  # (N, 2) int32 half-extent of the screen box in pixels; 0 where culled
    visible: torch.Tensor  # (N,) bool


def symmetric_from_upper(covars: torch.Tensor) -> torch.Tensor:
    """Read a (N, 3, 3) covariance from its upper triangle, as gsplat's CUDA path does.

    Both backends then see the same function of the input (and gradients land on the
    upper triangle only, exactly like gsplat's).
    """
    iu = torch.triu_indices(3, 3, device=covars.device)
    upper = covars[:, iu[0], iu[1]]  # (N, 6): 00 01 02 11 12 22
    a, b, c, d, e, f = upper.unbind(-1)
    return torch.stack([a, b, c, b, d, e, c, e, f], dim=-1).reshape(-1, 3, 3)


def project_gaussians(
    means: torch.Tensor,
    covars: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    near: float,
    far: float,
    eps2d: float = 0.3,
) -> Projected:
    """Project N Gaussians (means (N,3), covariances (N,3,3), opacities (N,)) through one camera."""
    # Only Gaussians between the clip planes go through the projection: one sitting on the
    # camera plane (z = 0) would otherwise put inf * 0 = NaN into every gradient.
    n = means.shape[0]
    with torch.no_grad():
        z = means @ viewmat[2, :3] + viewmat[2, 3]
        ids = torch.nonzero((z > near) & (z < far)).squeeze(1)
    radii_ref, m2d, dep, con, _ = project_reference(
        means.index_select(0, ids), covars.index_select(0, ids), viewmat[None], K[None], width, height,
        eps2d=eps2d, near_plane=near, far_plane=far,
    )
    means2d = means.new_zeros(n, 2).index_copy(0, ids, m2d[0])
    conics = means.new_zeros(n, 3).index_copy(0, ids, con[0])
    depths = means.new_zeros(n).index_copy(0, ids, dep[0])
    radii_ref = radii_ref.new_zeros(n, 2).index_copy(0, ids, radii_ref[0])
    with torch.no_grad():
        a, b, c = conics.unbind(-1)
        inv_det = a * c - b * b  # = 1 / det(blurred 2D covariance)
        # the torch reference clamps det at 1e-10 and keeps degenerate Gaussians; CUDA culls them
        ok = (radii_ref > 0).all(-1) & (inv_det > 0) & torch.isfinite(inv_det)
        ok &= opacities >= ALPHA_MIN
        safe_inv_det = torch.where(ok, inv_det, torch.ones_like(inv_det))
        var_x, var_y = c / safe_inv_det, a / safe_inv_det
        extend = torch.sqrt(2.0 * torch.log(opacities.clamp_min(ALPHA_MIN) / ALPHA_MIN)).clamp_max(EXTEND_MAX)
        rx = torch.ceil(extend * var_x.clamp_min(0).sqrt())
        ry = torch.ceil(extend * var_y.clamp_min(0).sqrt())
        mx, my = means2d.unbind(-1)
        ok &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        ok &= (rx > 0) & (ry > 0)
        radii = torch.stack([rx, ry], -1).where(ok[:, None], torch.zeros_like(means2d)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii, visible=ok)
