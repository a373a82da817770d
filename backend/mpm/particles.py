"""Per-particle inputs of a simulation (numpy, world units) and their validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import MaterialModel


def _per_particle(value: Any, n: int, name: str, dtype: Any) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full(n, arr, dtype=dtype)
    arr = arr.reshape(-1)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected {n} values (one per particle) or a scalar, got shape {np.shape(value)}")
    return arr.copy()


def _material_ids(value: Any, n: int) -> np.ndarray:
    if isinstance(value, (str, MaterialModel)) or np.ndim(value) == 0:
        try:
            model = MaterialModel.parse(value.item() if isinstance(value, (np.ndarray, np.generic)) else value)
        except ValueError as e:
            raise ValueError(f"material_id: {e}") from None
        return np.full(n, int(model), dtype=np.int32)
    arr = np.asarray(value)
    if arr.reshape(-1).shape != (n,):
        raise ValueError(f"material_id: expected {n} values or a scalar, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.dtype.kind not in "iu":
        try:
            return np.array([int(MaterialModel.parse(v.item() if isinstance(v, np.generic) else v)) for v in arr],
                            dtype=np.int32)
        except ValueError as e:
            raise ValueError(f"material_id: {e}") from None
    if arr.dtype.kind not in "iu" or arr.min() < 0 or arr.max() >= len(MaterialModel):
        raise ValueError(f"material_id: ids must be integers in 0..{len(MaterialModel) - 1}")
    return arr.astype(np.int32)


@dataclass
class ParticleState:
    """Particles to simulate.

    positions: (N,3) world metres (kept as float64). E: Young's modulus (Pa), nu: Poisson ratio (-1 < nu < 0.5),
    rho: density (kg/m^3): (N,) or scalars. material_id: (N,) ids / names of MaterialModel or
    one for all. anchor: (N,) bool, anchored particles stay fixed (and fix the grid nodes
    they dominate). velocity: (N,3) or (3,) initial velocity m/s. volume: (N,) or scalar m^3,
    None = dx^3 / (median particles per occupied grid cell). cov0: (N,3,3) rest covariance of
    the splat carried by each particle (m^2), None = isotropic with sigma = half the particle
    spacing. F0: (N,3,3) initial deformation gradient (the rest state under gravity, see
    rest.py), None = I; the splats are shown undeformed at F = F0.
    """

    positions: Any
    E: Any = 1.0e5
    nu: Any = 0.3
    rho: Any = 1000.0
    material_id: Any = 0
    anchor: Any = None
    velocity: Any = None
    volume: Any = None
    cov0: Any = None
    F0: Any = None

    def __post_init__(self) -> None:
        # float64: world coordinates far from the origin keep their precision until the solver
        # subtracts the domain origin.
        pos = np.asarray(self.positions, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3 or pos.shape[0] == 0:
            raise ValueError(f"positions: expected shape (N,3) with N >= 1, got {np.shape(self.positions)}")
        if not np.isfinite(pos).all():
            raise ValueError("positions: contain NaN or inf")
        n = pos.shape[0]
        self.positions = np.ascontiguousarray(pos)
        self.E = _per_particle(self.E, n, "E", np.float64)
        self.nu = _per_particle(self.nu, n, "nu", np.float64)
        self.rho = _per_particle(self.rho, n, "rho", np.float64)
        if not (np.isfinite(self.E).all() and (self.E > 0).all()):
            raise ValueError("E (Young's modulus, Pa) must be finite and > 0")
        if not ((self.nu > -1.0).all() and (self.nu < 0.5).all()):
            raise ValueError("nu (Poisson ratio) must lie strictly between -1 and 0.5")
        if not (np.isfinite(self.rho).all() and (self.rho > 0).all()):
            raise ValueError("rho (density, kg/m^3) must be finite and > 0")
        self.material_id = _material_ids(self.material_id, n)
        self.anchor = np.zeros(n, bool) if self.anchor is None else _per_particle(self.anchor, n, "anchor", bool)
        vel = np.zeros((n, 3), np.float32) if self.velocity is None else np.asarray(self.velocity, np.float32)
        if vel.shape == (3,):
            vel = np.tile(vel, (n, 1))
        if vel.shape != (n, 3) or not np.isfinite(vel).all():
            raise ValueError(f"velocity: expected finite (N,3) or (3,) m/s, got shape {vel.shape}")
        self.velocity = np.ascontiguousarray(vel)
        if self.volume is not None:
            self.volume = _per_particle(self.volume, n, "volume", np.float64)
            if not (np.isfinite(self.volume).all() and (self.volume > 0).all()):
                raise ValueError("volume (m^3 per particle) must be finite and > 0")
        if self.cov0 is not None:
            cov = np.asarray(self.cov0, dtype=np.float32)
            if cov.shape != (n, 3, 3) or not np.isfinite(cov).all():
                raise ValueError(f"cov0: expected finite (N,3,3), got shape {cov.shape}")
            self.cov0 = np.ascontiguousarray(cov)
        if self.F0 is not None:
            F0 = np.asarray(self.F0, dtype=np.float32)
            if F0.shape != (n, 3, 3) or not np.isfinite(F0).all() or not (np.linalg.det(F0) > 0).all():
                raise ValueError(f"F0: expected finite (N,3,3) with det > 0, got shape {F0.shape}")
            self.F0 = np.ascontiguousarray(F0)

    @property
    def n(self) -> int:
        return int(self.positions.shape[0])


def rest_shape_matrices(cov0: np.ndarray | None, volume: np.ndarray, F0: np.ndarray | None = None) -> np.ndarray:
    """A0 (N,3,3) with A0 A0^T = cov0 (symmetric square root via eigh); A_t = F A0. With a rest
    deformation F0, A0 = F0^-1 sqrt(cov0), so the splats show their captured shape at F = F0."""
    if cov0 is None:
        sigma = 0.5 * np.cbrt(volume)
        a0 = np.eye(3)[None] * sigma[:, None, None]
    else:
        sym = 0.5 * (cov0 + np.transpose(cov0, (0, 2, 1))).astype(np.float64)
        w, q = np.linalg.eigh(sym)
        w = np.clip(w, 0.0, None)
        a0 = q * np.sqrt(w)[:, None, :] @ np.transpose(q, (0, 2, 1))
    if F0 is not None:
        a0 = np.linalg.solve(np.asarray(F0, np.float64), a0)
    return a0.astype(np.float32)
