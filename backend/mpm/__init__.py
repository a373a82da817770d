"""Differentiable MLS-MPM simulator (warp) for Gaussian-splat objects.

World units at the interface (metres, seconds, Pa, kg/m^3, Z up), domain-local positions inside.
Modules: config (settings), particles (inputs), grid (world <-> domain-local <-> grid mapping, CFL),
constitutive / boundary / kernels (warp code), core (one substep), solver (forward baking), rest
(rest state under gravity), autograd (checkpointed gradients + torch bridge), splat_frames (covariances
and ellipsoids), reference (a float64 torch substep the kernels are tested against; not imported here).
Interior filling is backend/geometry/fill.py (numpy only, shared with the add-on).
"""

from .config import Boundary, BoxCollider, Ground, MaterialModel, Plasticity, Poke, SimConfig, Wind
from .errors import SimulationDiverged
from ..geometry.fill import fill_interior  # numpy only; its home is backend/geometry/fill.py
from .particles import ParticleState
from .solver import MPMSolver
from .splat_frames import FrameOutput, covariance_from_splats

__all__ = [
    "SimConfig", "Boundary", "Ground", "Poke", "Wind", "BoxCollider", "Plasticity", "MaterialModel",
    "ParticleState", "MPMSolver", "SimulationDiverged", "DifferentiableSim", "FrameOutput",
    "fill_interior", "covariance_from_splats",
]


def __getattr__(name):
    # DifferentiableSim pulls in torch; import it only when asked for.
    if name == "DifferentiableSim":
        from .autograd import DifferentiableSim
        return DifferentiableSim
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
