"""Splat geometry in numpy only, shared by the add-on and the backend (no torch, no warp).

quat_to_matrix turns wxyz quaternions into rotation matrices; splat_shape gives the log scales and
unit quaternions of a scene's splats, with the defaults of a plain point cloud where they are missing.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

# A point cloud without splat scales: ellipsoids sized by the mean spacing of the points.
_SPACING_FACTOR = 0.5


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """(N,4) wxyz quaternions (normalised here; a zero one counts as identity) -> (N,3,3) rotations."""
    q = np.asarray(q, np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1), np.array([1.0, 0, 0, 0]))
    w, x, y, z = q.T
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=1).reshape(-1, 3, 3)


def splat_shape(scene: Mapping[str, np.ndarray], pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log scales (N,3) and unit wxyz quaternions (N,4), float32; defaults for plain point clouds."""
    n = len(pos)
    if "scale" in scene:
        log_scale = np.asarray(scene["scale"], np.float32)
    else:
        extent = np.maximum(pos.max(0) - pos.min(0), 1e-6) if n > 1 else np.full(3, 0.01)
        spacing = float(np.cbrt(np.prod(extent) / max(n, 1)))
        log_scale = np.full((n, 3), np.log(max(spacing * _SPACING_FACTOR, 1e-6)), np.float32)
    if "rotation" in scene:
        quat = np.asarray(scene["rotation"], np.float32)
        norm = np.linalg.norm(quat, axis=1, keepdims=True)
        quat = np.where(norm > 1e-12, quat / np.maximum(norm, 1e-12), np.array([1, 0, 0, 0], np.float32))
    else:
        quat = np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1))
    return log_scale, quat.astype(np.float32)
