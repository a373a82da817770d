"""Scene builders shared by the MPM tests (small grids, a few thousand particles at most)."""

from __future__ import annotations

import numpy as np


def lattice(lo, hi, spacing):
    """Particles at the centres of a regular lattice filling the box lo..hi (metres)."""
    axes = [np.arange(a + 0.5 * spacing, b - 1e-9, spacing) for a, b in zip(lo, hi)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
