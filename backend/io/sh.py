"""Real spherical harmonics of degree 0-3 in the 3DGS convention, with numpy only (the add-on imports it).

Colour seen along the unit direction d (camera -> splat) is max(SH_C0 f_dc + sum_k f_rest_k Y_k(d) + 0.5, 0)
per channel, with the bases below in 3DGS order (band 1: y, z, x; ...). The renderer evaluates the same
bases through gsplat (backend/render/sh.py); this module serves the Blender side: rotating coefficients
when a capture's axes are converted on import/export, and the constants the render-camera colour
nodes are built from.
"""

from __future__ import annotations

import numpy as np

from .ply import SH_C0

SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)
MAX_DEGREE = 3


def rest_count(degree: int) -> int:
    """Coefficients per channel beyond the DC term: 0, 3, 8, 15."""
    return (degree + 1) ** 2 - 1


def degree_of(f_rest_columns: int) -> int:
    """SH degree of an (N, 3*K) f_rest block; ValueError for a width that is no degree's."""
    for degree in range(MAX_DEGREE + 1):
        if 3 * rest_count(degree) == f_rest_columns:
            return degree
    raise ValueError(f"f_rest has {f_rest_columns} columns; expected 0, 9, 24 or 45 (SH degree 0-3)")


def basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """(M, rest_count(degree)) values of the bases beyond DC at unit directions ``dirs`` (M, 3)."""
    d = np.asarray(dirs, dtype=np.float64)
    x, y, z = d[:, 0], d[:, 1], d[:, 2]
    cols = []
    if degree >= 1:
        cols += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        cols += [SH_C2[0] * x * y, SH_C2[1] * y * z, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * x * z,
                 SH_C2[4] * (xx - yy)]
    if degree >= 3:
        cols += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * x * y * z, SH_C3[2] * y * (4 * zz - xx - yy),
                 SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                 SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return np.stack(cols, axis=1) if cols else np.zeros((len(d), 0))


def dc_to_rgb(f_dc: np.ndarray) -> np.ndarray:
    """The view-independent base colour in [0, 1] of DC coefficients (N, 3), in their own float type."""
    f_dc = np.asarray(f_dc)
    return np.clip(0.5 + SH_C0 * f_dc, 0.0, 1.0).astype(f_dc.dtype, copy=False)


def colour(f_dc: np.ndarray, f_rest: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """(N, 3) colours of N splats seen along unit ``dirs`` (N, 3); f_rest channel-major (N, 3*K)."""
    f_rest = np.asarray(f_rest, dtype=np.float64)
    k = f_rest.shape[1] // 3
    y = basis(dirs, degree_of(f_rest.shape[1]))
    rest = np.einsum("nk,nck->nc", y, f_rest.reshape(len(f_rest), 3, k)) if k else 0.0
    return np.maximum(SH_C0 * np.asarray(f_dc, dtype=np.float64) + rest + 0.5, 0.0)


def rotation(m3: np.ndarray, degree: int) -> np.ndarray:
    """(K, K) map of one channel's coefficients under the rotation ``m3``: the rotated splat seen along
    m3 @ d looks as the original seen along d. Each band is an invariant subspace, so a least-squares fit
    on enough directions is exact (block diagonal by band)."""
    k = rest_count(degree)
    if k == 0:
        return np.zeros((0, 0))
    dirs = np.random.default_rng(0).normal(size=(64, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    a = basis(dirs, degree)  # the rotated splat's bases at d' = m3 d ...
    b = basis(dirs @ np.asarray(m3, dtype=np.float64), degree)  # ... equal the original's at m3^T d'
    return np.linalg.lstsq(a, b, rcond=None)[0]


def rotate_f_rest(f_rest: np.ndarray, m3: np.ndarray) -> np.ndarray:
    """f_rest (N, 3*K), channel-major, for splats turned by the rotation ``m3``."""
    f_rest = np.asarray(f_rest, dtype=np.float32)
    k = f_rest.shape[1] // 3
    if k == 0:
        return f_rest
    r = rotation(m3, degree_of(f_rest.shape[1]))
    out = f_rest.reshape(len(f_rest), 3, k).astype(np.float64) @ r.T
    return out.reshape(len(f_rest), 3 * k).astype(np.float32)
