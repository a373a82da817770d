"""Differentiable MLS-MPM simulator (warp) for Gaussian-splat objects. World units: m, s, Pa, kg/m^3."""

from .config import (Boundary, BoxCollider, Ground, MaterialModel, Plasticity, Poke, SimConfig, Wind)
from .errors import SimulationDiverged
from .particles import ParticleState
from .solver import MPMSolver
from .splats import FrameOutput, covariance_from_splats

__all__ = [
    "SimConfig", "Boundary", "Ground", "Poke", "Wind", "BoxCollider", "Plasticity", "MaterialModel",
    "ParticleState", "MPMSolver", "SimulationDiverged", "FrameOutput", "covariance_from_splats",
]
