"""World <-> domain-local <-> grid mapping, default particle volumes and the CFL substep bound (host side, numpy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..protocol import p_wave_speed  # noqa: F401  (its home is protocol: the add-on projects substeps with it)
from .config import SimConfig

# Snow's hardening factor exp(xi (1 - Jp)) is clamped to this range in the kernels; the CFL bound
# uses the upper end so a hardened snow particle still meets it.
SNOW_HARDENING_RANGE = (0.1, 10.0)


@dataclass
class GridMapping:
    """Uniform cubic grid of n^3 nodes; node (i, j, k) sits at origin + (i, j, k) * dx (world metres).

    The solver works in domain-local coordinates, x_local = x_world - origin (to_local / to_world),
    so node (i, j, k) sits at (i, j, k) * dx there.

    The domain AABB (where the walls are) starts `padding` cells after the first node, and its
    largest extent spans n - 2 * padding cells, so the uniform scale is 1 / dx.
    """

    n: int
    dx: float
    origin: np.ndarray
    domain_min: np.ndarray
    domain_max: np.ndarray

    @classmethod
    def build(cls, config: SimConfig, positions: np.ndarray) -> "GridMapping":
        if config.domain_min is not None:
            dmin = np.asarray(config.domain_min, dtype=np.float64)
            dmax = np.asarray(config.domain_max, dtype=np.float64)
        else:
            lo, hi = positions.min(axis=0).astype(np.float64), positions.max(axis=0).astype(np.float64)
            ext = max(float((hi - lo).max()), 0.1)
            dmin, dmax = lo - 0.5 * ext, hi + 0.5 * ext
        n, pad = config.n_grid, config.padding
        dx = float((dmax - dmin).max()) / (n - 2 * pad)
        origin = dmin - pad * dx
        grid = cls(n=n, dx=dx, origin=origin, domain_min=dmin, domain_max=dmax)
        grid.check_inside(positions)
        return grid

    def to_local(self, world: np.ndarray) -> np.ndarray:
        """Domain-local float32 positions (metres from the first grid node), computed in float64 so
        the solver's precision does not depend on where the object sits in the world."""
        return (np.asarray(world, np.float64) - self.origin).astype(np.float32)

    def to_world(self, local: np.ndarray) -> np.ndarray:
        """World float64 positions from domain-local ones."""
        return np.asarray(local, np.float64) + self.origin

    def check_inside(self, positions: np.ndarray) -> None:
        tol = 0.5 * self.dx
        out = np.any((positions < self.domain_min - tol) | (positions > self.domain_max + tol), axis=1)
        if out.any():
            raise ValueError(
                f"{int(out.sum())} of {len(positions)} particles lie outside the simulation domain "
                f"{self.domain_min.round(4).tolist()} .. {self.domain_max.round(4).tolist()} (metres); "
                "enlarge domain_min/domain_max or move the object inside it."
            )

    def default_volume(self, positions: np.ndarray) -> float:
        """Per-particle volume (m^3) = dx^3 / (mean particle count of the interior grid cells).

        Interior cells are occupied cells whose six face neighbours are occupied too, so the
        half-empty surface cells do not bias the density; without interior cells (thin or tiny
        objects) the median count of the occupied cells is used, and a lone particle gets a cell.
        """
        cells = np.floor((positions - self.origin) / self.dx).astype(np.int64)
        n = self.n
        key = (cells[:, 0] * n + cells[:, 1]) * n + cells[:, 2]
        uniq, counts = np.unique(key, return_counts=True)
        interior = np.ones(len(uniq), dtype=bool)
        for off in (1, n, n * n):
            interior &= np.isin(uniq + off, uniq) & np.isin(uniq - off, uniq)
        typical = counts[interior].mean() if interior.any() else float(np.median(counts))
        return self.dx ** 3 / float(typical)


def displaced(world0: np.ndarray, local0: np.ndarray, local: np.ndarray) -> np.ndarray:
    """World positions (float64) = the initial world positions + the displacement simulated domain-local,
    so a particle that has not moved (an anchor) comes back bit for bit."""
    return world0 + (np.asarray(local, np.float64) - local0)


def lame(E: np.ndarray, nu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lame parameters (mu, lambda) in Pa."""
    E, nu = np.asarray(E, dtype=np.float64), np.asarray(nu, dtype=np.float64)
    return E / (2.0 * (1.0 + nu)), E * nu / ((1.0 + nu) * (1.0 - 2.0 * nu))


@dataclass
class SubstepPlan:
    n: int            # substeps per frame
    dt: float         # seconds, frame_dt / n
    n_required: int   # what the CFL bound asked for (n < n_required when the cap bit)

    @property
    def capped(self) -> bool:
        return self.n < self.n_required


def plan_substeps(config: SimConfig, dx: float, c_max: float, v_max: float) -> SubstepPlan:
    """Substeps per frame from config.substep_dt, or from dt <= cfl * dx / (c_max + v_max)."""
    frame_dt = config.frame_dt
    if config.substep_dt is not None:
        need = max(1, math.ceil(frame_dt / config.substep_dt - 1e-6))
    else:
        speed = max(float(c_max) + float(v_max), 1e-9)
        need = max(1, math.ceil(frame_dt * speed / (config.cfl * dx) - 1e-9))
    n = min(need, config.max_substeps_per_frame)
    return SubstepPlan(n=n, dt=frame_dt / n, n_required=need)
