"""Splat geometry: rest covariances from 3DGS attributes and per-frame deformed ellipsoids.

Sigma0 = R S S R^T with S = diag(exp(log_scale)) and R from the wxyz quaternion. A particle with
deformation gradient F carries A = F A0 (A0 A0^T = Sigma0), so Sigma_t = A A^T = F Sigma0 F^T.
For Blender instancing, A = U diag(s) V^T (SVD): the ellipsoid has axes U (a proper rotation,
output as a wxyz quaternion) and semi-axes s (metres), Sigma_t = U diag(s^2) U^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import warp as wp

from ..geometry.shape import quat_to_matrix

wp.set_module_options({"enable_backward": False})


def covariance_from_splats(log_scales: np.ndarray, quats_wxyz: np.ndarray) -> np.ndarray:
    """Rest covariances (N,3,3) in m^2 from 3DGS log scales (scale_0..2) and rot_0..3 (wxyz)."""
    log_scales = np.asarray(log_scales, dtype=np.float64)
    quats_wxyz = np.asarray(quats_wxyz, dtype=np.float64)
    if log_scales.ndim != 2 or log_scales.shape[1] != 3 or quats_wxyz.shape != (log_scales.shape[0], 4):
        raise ValueError(f"expected log_scales (N,3) and quats (N,4), got {log_scales.shape} and {quats_wxyz.shape}")
    rs = quat_to_matrix(quats_wxyz) * np.exp(log_scales)[:, None, :]
    return (rs @ np.transpose(rs, (0, 2, 1))).astype(np.float32)


@dataclass
class FrameOutput:
    """One output frame (numpy, world units). rotations are wxyz quaternions of U, scales are the
    ellipsoid semi-axes s (m), cov = F Sigma0 F^T (m^2), A = F A0, polar_R the rotation of F."""

    frame: int
    time: float
    positions: np.ndarray
    rotations: np.ndarray | None = None
    scales: np.ndarray | None = None
    cov: np.ndarray | None = None
    polar_R: np.ndarray | None = None
    A: np.ndarray | None = None


@wp.kernel
def splat_frame(
    F: wp.array(dtype=wp.mat33),
    A0: wp.array(dtype=wp.mat33),
    cov: wp.array(dtype=wp.mat33),
    A_out: wp.array(dtype=wp.mat33),
    polar: wp.array(dtype=wp.mat33),
    quat: wp.array(dtype=wp.vec4),
    scale: wp.array(dtype=wp.vec3),
):
    p = wp.tid()
    f = F[p]
    a = f @ A0[p]
    cov[p] = a @ wp.transpose(a)
    A_out[p] = a
    u = wp.mat33()
    s = wp.vec3()
    v = wp.mat33()
    wp.svd3(f, u, s, v)
    polar[p] = u @ wp.transpose(v)
    wp.svd3(a, u, s, v)
    # Semi-axes are |s|; flipping a column of U keeps U diag(s^2) U^T, so make U a proper rotation.
    sg = wp.vec3(wp.where(s[0] < 0.0, -1.0, 1.0), wp.where(s[1] < 0.0, -1.0, 1.0), wp.where(s[2] < 0.0, -1.0, 1.0))
    u = u @ wp.diag(sg)
    if wp.determinant(u) < 0.0:
        u = u @ wp.diag(wp.vec3(1.0, 1.0, -1.0))
    q = wp.normalize(wp.quat_from_matrix(u))
    if q[3] < 0.0:
        q = -q
    quat[p] = wp.vec4(q[3], q[0], q[1], q[2])
    scale[p] = wp.vec3(wp.abs(s[0]), wp.abs(s[1]), wp.abs(s[2]))


class SplatOutputs:
    """Preallocated device buffers for the per-frame splat outputs."""

    def __init__(self, A0: np.ndarray, device: str):
        n = A0.shape[0]
        self.device = device
        self.A0 = wp.array(A0.astype(np.float32), dtype=wp.mat33, device=device)
        self.cov = wp.zeros(n, dtype=wp.mat33, device=device)
        self.A = wp.zeros(n, dtype=wp.mat33, device=device)
        self.polar = wp.zeros(n, dtype=wp.mat33, device=device)
        self.quat = wp.zeros(n, dtype=wp.vec4, device=device)
        self.scale = wp.zeros(n, dtype=wp.vec3, device=device)

    def compute(self, F: wp.array, frame: int, time: float, positions: np.ndarray) -> FrameOutput:
        wp.launch(splat_frame, F.shape[0], inputs=[F, self.A0],
                  outputs=[self.cov, self.A, self.polar, self.quat, self.scale], device=self.device)
        return FrameOutput(frame=frame, time=time, positions=positions, rotations=self.quat.numpy().copy(),
                           scales=self.scale.numpy().copy(), cov=self.cov.numpy().copy(),
                           polar_R=self.polar.numpy().copy(), A=self.A.numpy().copy())
