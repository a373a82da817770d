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
