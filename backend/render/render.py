"""The one entry point for rendering splats: `render_splats` (one view) and `render_video` (T frames).

backend="auto" picks gsplat's CUDA rasteriser for CUDA tensors and the torch tile
compositor (composite.py) otherwise; both follow the same rules, so images agree.
Everything is differentiable with respect to means, covariances (or quats/scales),
colours/SH and opacities.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .camera import Camera
from .composite import composite
from .dense import composite_dense
from .gsplat_private import quat_scale_to_covar_preci
from .projection import project_gaussians, symmetric_from_upper
from .sh import MAX_DEGREE, degree_from_bases, sh_to_rgb, view_directions
from .tiles import bin_gaussians

# "reference" is the brute-force dense compositor (dense.py): slow, for tests.
BACKENDS = ("auto", "torch", "gsplat", "reference")


class RenderInputError(ValueError):
    """Render inputs that cannot be used; the message says which and why."""


@dataclass
class RenderOutput:
    rgb: torch.Tensor  # (H, W, 3) composited over the background
    alpha: torch.Tensor  # (H, W, 1) accumulated opacity
    depth: torch.Tensor  # (H, W, 1) expected camera-space depth (0 where nothing was drawn)
    backend: str  # "torch" or "gsplat": what actually ran


def _check_shape(name: str, t, shape: tuple) -> None:
    if not isinstance(t, torch.Tensor):
        raise RenderInputError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if t.dim() != len(shape) or any(s is not None and a != s for a, s in zip(t.shape, shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise RenderInputError(f"{name} must have shape {want}, got {tuple(t.shape)}")


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise RenderInputError(f"{name} contains NaN or infinite values (did the simulation blow up?)")


def _choose_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise RenderInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if backend == "gsplat" and device.type != "cuda":
        raise RenderInputError("backend='gsplat' needs CUDA tensors (gsplat's rasteriser is CUDA-only); "
                               "use backend='torch' or 'auto' on the CPU")
    return backend


def _prepare(means, colors, sh, sh_degree, opacities, covars, quats, scales, background, sh_rotations):
    """Validate shapes/values and bring everything to means' dtype and device."""
    _check_shape("means", means, (None, 3))
    if not means.is_floating_point():
        raise RenderInputError(f"means must be floating point, got {means.dtype}")
    N, dt, dev = means.shape[0], means.dtype, means.device
    _check_finite("means", means)

    def conv(name, t, shape):
        if t is None:
            return None
        _check_shape(name, t, shape)
        return t.to(device=dev, dtype=dt)

    opacities = conv("opacities", opacities, (N,))
    if opacities is None:
        raise RenderInputError("opacities (N,) in [0, 1] are required")
    if N and (bool((opacities < 0).any()) or bool((opacities > 1).any())):
        raise RenderInputError("opacities must lie in [0, 1] (apply a sigmoid to PLY 'opacity' logits first)")

    if (colors is None) == (sh is None):
        raise RenderInputError("give exactly one of colors (N, 3) or sh (N, K, 3)")
    colors = conv("colors", colors, (N, 3))
    sh = conv("sh", sh, (N, None, 3))
    if sh is not None:
        try:
            full = degree_from_bases(sh.shape[1])
        except ValueError as e:
            raise RenderInputError(str(e)) from None
        sh_degree = full if sh_degree is None else int(sh_degree)
        if not 0 <= sh_degree <= min(full, MAX_DEGREE):
            raise RenderInputError(
                f"sh_degree must be between 0 and {full} for {sh.shape[1]} SH bases, got {sh_degree}")

    if covars is not None:
        if quats is not None or scales is not None:
            raise RenderInputError("give either covars or quats+scales, not both")
        covars = conv("covars", covars, (N, 3, 3))
        _check_finite("covars", covars)
    else:
        if quats is None or scales is None:
            raise RenderInputError("give covars (N, 3, 3) or both quats (N, 4, wxyz) and scales (N, 3, linear)")
        quats, scales = conv("quats", quats, (N, 4)), conv("scales", scales, (N, 3))
        _check_finite("quats", quats)
        _check_finite("scales", scales)
        if N and bool((quats.norm(dim=-1) < 1e-12).any()):
            raise RenderInputError("quats contains zero-length quaternions")
    sh_rotations = conv("sh_rotations", sh_rotations, (N, 3, 3))

    if background is None:
        background = torch.zeros(3, dtype=dt, device=dev)
    else:
        background = torch.as_tensor(background, dtype=dt, device=dev)
        _check_shape("background", background, (3,))
    return colors, sh, sh_degree, opacities, covars, quats, scales, background, sh_rotations


def render_splats(
    means: torch.Tensor,
    *,
    camera: Camera,
    opacities: torch.Tensor,
    colors: torch.Tensor | None = None,
    sh: torch.Tensor | None = None,
    sh_degree: int | None = None,
    covars: torch.Tensor | None = None,
    quats: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    background: Sequence[float] | torch.Tensor | None = None,
    sh_rotations: torch.Tensor | None = None,
    backend: str = "auto",
    eps2d: float = 0.3,
    tile_size: int = 8,
) -> RenderOutput:
    """Render N Gaussians through one camera.

    means (N,3) world positions; opacities (N,) in [0,1]; colours either `colors` (N,3)
    RGB or `sh` (N,K,3) coefficients (K = 1/4/9/16, gsplat order; `sh_degree` defaults to
    the full degree). Shape either `covars` (N,3,3) (only the upper triangle is read, as in
    gsplat) or `quats` (N,4, wxyz, any norm) + `scales` (N,3, linear). `sh_rotations`
    (N,3,3): per-splat rotation applied since the SH were fitted (view direction -> R^T d).
    `background` (3,) RGB, default black. `eps2d` is gsplat's screen-space blur (pixels^2).
    `tile_size` is the torch compositor's tile side (any size gives the same image; 8 is
    fastest on CPUs); gsplat always uses its own 16.
    """
    if not isinstance(camera, Camera):
        raise RenderInputError(f"camera must be a backend.render.Camera, got {type(camera).__name__}")
    colors, sh, sh_degree, opacities, covars, quats, scales, background, sh_rotations = _prepare(
        means, colors, sh, sh_degree, opacities, covars, quats, scales, background, sh_rotations)
    which = _choose_backend(backend, means.device)
    dt, dev = means.dtype, means.device
    viewmat = torch.as_tensor(camera.viewmat, dtype=dt, device=dev)
    K = torch.as_tensor(camera.K, dtype=dt, device=dev)
    W, H = camera.width, camera.height

    if means.shape[0] == 0:
        return RenderOutput(background.expand(H, W, 3).clone(), means.new_zeros(H, W, 1),
                            means.new_zeros(H, W, 1), which)

    if sh is not None:
        campos = torch.as_tensor(camera.campos, dtype=dt, device=dev)
        dirs = view_directions(means, campos, sh_rotations)
        colors = sh_to_rgb(sh[:, : (sh_degree + 1) ** 2], sh_degree, dirs, use_cuda_kernel=(which == "gsplat"))

    if which == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        rgb, alpha, depth = rasterize_gsplat(means, covars, quats, scales, opacities, colors, viewmat, K, W, H,
                                             camera.near, camera.far, background, eps2d=eps2d)
        return RenderOutput(rgb, alpha, depth, which)

    if covars is None:
        covars, _ = quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    else:
        covars = symmetric_from_upper(covars)
    proj = project_gaussians(means, covars, opacities, viewmat, K, W, H, camera.near, camera.far, eps2d=eps2d)
    feats = torch.cat([colors, proj.depths[:, None]], dim=-1)
    if which == "reference":
        acc, alpha = composite_dense(proj.means2d, proj.conics, opacities, feats, proj.depths, proj.visible, W, H)
    else:
        bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, proj.visible, W, H, tile_size)
        acc, alpha = composite(proj.means2d, proj.conics, opacities, feats, bins, W, H)
    rgb = acc[..., :3] + (1.0 - alpha) * background
    depth = acc[..., 3:4] / alpha.clamp_min(1e-10)
    return RenderOutput(rgb, alpha, depth, which)


def render_video(
    means: torch.Tensor | Sequence[torch.Tensor],
    *,
    cameras: Camera | Sequence[Camera],
    opacities: torch.Tensor,
    colors: torch.Tensor | None = None,
    sh: torch.Tensor | None = None,
    sh_degree: int | None = None,
    covars: torch.Tensor | Sequence[torch.Tensor] | None = None,
    quats: torch.Tensor | Sequence[torch.Tensor] | None = None,
    scales: torch.Tensor | Sequence[torch.Tensor] | None = None,
    sh_rotations: torch.Tensor | Sequence[torch.Tensor] | None = None,
    background: Sequence[float] | torch.Tensor | None = None,
    backend: str = "auto",
    eps2d: float = 0.3,
) -> RenderOutput:
    """Render T frames: per-frame means (T,N,3) and covars (T,N,3,3) or quats/scales (T,N,...),
    optional per-frame sh_rotations (T,N,3,3); colours/SH and opacities are shared by all frames.
    `cameras` is one Camera or T of them. Returns a RenderOutput with a leading T axis.
    """
    T = len(means)
    cams = [cameras] * T if isinstance(cameras, Camera) else list(cameras)
    if len(cams) != T:
        raise RenderInputError(f"render_video got {T} frames but {len(cams)} cameras")

    def frame(x, t):
        if x is None:
            return None
        if len(x) != T:
            raise RenderInputError(f"per-frame inputs must all have {T} frames, got {len(x)}")
        return x[t]

    outs = [
        render_splats(means[t], camera=cams[t], opacities=opacities, colors=colors, sh=sh, sh_degree=sh_degree,
                      covars=frame(covars, t), quats=frame(quats, t), scales=frame(scales, t),
                      sh_rotations=frame(sh_rotations, t), background=background, backend=backend, eps2d=eps2d)
        for t in range(T)
    ]
    if not outs:
        raise RenderInputError("render_video needs at least one frame")
    return RenderOutput(torch.stack([o.rgb for o in outs]), torch.stack([o.alpha for o in outs]),
                        torch.stack([o.depth for o in outs]), outs[0].backend)
