"""Scene builders shared by the MPM tests (small grids, a few thousand particles at most)."""

from __future__ import annotations

import numpy as np


def lattice(lo, hi, spacing):
    """Particles at the centres of a regular lattice filling the box lo..hi (metres)."""
    axes = [np.arange(a + 0.5 * spacing, b - 1e-9, spacing) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)


def cantilever(dx=0.01, length_cells=24, thickness_cells=6, width_cells=2, grip_cells=4, offset=(0.0, 0.0, 0.0)):
    """A bar along +x clamped over its first grip_cells cells, thickness along z (gravity's axis).

    Returns (positions float64 (N,3), anchor (N,), dict of geometry in metres). The clamp face x_a
    lies on a grid node of a domain (0,0,0)..(domain) with n_grid nodes (3 cells of padding)."""
    sp = dx / 2
    x0, xa = 2 * dx, (2 + grip_cells) * dx
    L, h, b = length_cells * dx, thickness_cells * dx, width_cells * dx
    y0, z0 = 5 * dx, 10 * dx
    pos = lattice((x0, y0, z0), (xa + L, y0 + b, z0 + h), sp).astype(np.float64)
    domain = (xa + L + 6 * dx, y0 + b + 5 * dx, z0 + h + 8 * dx)
    n_grid = int(round(max(domain) / dx)) + 6
    geo = dict(L=L, h=h, b=b, xa=xa, sp=sp, domain=domain, n_grid=n_grid)
    return pos + np.asarray(offset), pos[:, 0] < xa, geo


def gradient_scene(lo, hi, spacing, n_frames, seed, stretch=(1.0, -0.5, -0.5), spin=0.3, nu_spread=0.05):
    """A lattice block for gradient tests, with what a loss over n_frames frames needs.

    The initial velocity stretches the block along x, squeezes it across and spins it about z (shear, volume
    change and rotation at once); log E and nu vary per particle around 1e4 Pa and 0.3. Returns
    (positions (N,3), params {log_E, nu, rho, v0} float64, weights for positions (T,N,3) and
    covariances (T,N,3,3), the generator) with v0 rounded to float32 as the simulator reads it."""
    pos = lattice(lo, hi, spacing)
    n = len(pos)
    rng = np.random.default_rng(seed)
    c = pos.mean(axis=0)
    v0 = (pos - c) * np.asarray(stretch) + spin * np.cross(pos - c, [0, 0, 1])
    params = {"log_E": np.log(1e4) + 0.2 * rng.standard_normal(n), "nu": 0.3 + nu_spread * rng.standard_normal(n),
              "rho": np.full(n, 1000.0), "v0": v0.astype(np.float32).astype(np.float64)}
    weights = (rng.standard_normal((n_frames, n, 3)), rng.standard_normal((n_frames, n, 3, 3)) * 1e3)
    return pos, params, weights, rng


def random_rotations(rng, n):
    """n random proper rotations (N,3,3)."""
    q, _ = np.linalg.qr(rng.standard_normal((n, 3, 3)))
    return q * np.sign(np.linalg.det(q))[:, None, None]
