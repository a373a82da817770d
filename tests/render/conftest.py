"""Small random splat scenes for the renderer tests."""

import math

import numpy as np
import pytest

try:  # the camera tests also run in the bpy-only environment, without torch
    import torch
except ImportError:
    torch = None

EYE = (3.0, 0.2, 0.4)


def make_scene(n, seed, dtype=None, kind="mixed", sh_bases=None):
    """Gaussians around the origin, seen by `scene_camera` from distance 3.

    kind: "mixed" (spread out, some overlapping clusters, some near the camera, some behind
    it or off screen), "opaque" (stacked high-opacity splats, so pixels stop at T <= 1e-4).
    Returns dict(means, covars, quats, scales, opacities, colors[, sh]).
    """
    from backend.render.gsplat_private import quat_to_rotmat

    dtype = dtype or torch.float64
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    if kind == "opaque":
        means = (r(n, 3) - 0.5) * torch.tensor([0.3, 0.3, 1.0], dtype=dtype)
        scales = 0.08 + 0.15 * r(n, 3)
        opacities = 0.9 + 0.1 * r(n)
    else:
        means = (r(n, 3) - 0.5) * 2.0
        # a tight cluster, so many Gaussians overlap the same pixels
        means[: n // 4] = 0.15 * (r(n // 4, 3) - 0.5) + torch.tensor([0.2, -0.1, 0.1], dtype=dtype)
        scales = torch.exp(math.log(0.02) + r(n, 3) * math.log(10.0))
        opacities = 0.05 + 0.95 * r(n)
        # near-camera splats: large on screen, some partly off it
        eye = torch.tensor(EYE, dtype=dtype)
        fwd = -eye / eye.norm()
        k = max(3, n // 20)
        means[-k:] = eye + 0.3 * fwd + 0.2 * (r(k, 3) - 0.5)
        scales[-k:] = 0.005 + 0.02 * r(k, 3)
        means[-1] = eye - 0.5 * fwd  # behind the camera
        means[-2] = eye + 0.05 * fwd  # closer than the near plane: culled
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    R = quat_to_rotmat(quats)
    M = R * scales[:, None, :]
    covars = M @ M.transpose(1, 2)
    scene = dict(means=means, covars=covars, quats=quats, scales=scales, opacities=opacities, colors=r(n, 3))
    if sh_bases:
        scene["sh"] = 0.4 * (r(n, sh_bases, 3) - 0.5)
        scene["sh"][:, 0] = (r(n, 3) - 0.5) / 0.28209479177387814
    return scene


def scene_camera(width, height, near=0.1):
    from backend.render import Camera, look_at

    f = 0.9 * max(width, height)
    K = np.array([[f, 0, width / 2 + 1.3], [0, f * 1.1, height / 2 - 0.7], [0, 0, 1]])
    return Camera(look_at(EYE, (0, 0, 0)), K, width, height, near=near, far=100.0)


@pytest.fixture
def scene_factory():
    return make_scene


@pytest.fixture
def camera_factory():
    return scene_camera
