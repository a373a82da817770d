"""Rest state under gravity: the deformation gradients that make the captured shape an equilibrium.

A capture shows an object already loaded by gravity (and held by its anchors), so simulating it from
F = I lets it sag. The rest state is found by damped quasi-static solves and rebasing:

1. relax: from the captured positions X with the current F_rest, simulate under gravity with about
   critical damping of the first mode (its frequency is measured on the first release) until the
   remaining motion is below a tenth of the tolerance; the particles settle at x_k with F_k;
2. the residual is max |x_k - X| / object size: how far the object would move if left alone;
3. rebase: F_rest = F_k. The stress that held x_k is now carried by the captured shape X.

Repeat until the residual is below `tolerance`. The difference between the equilibria of x_k and X
is geometric (second order in the strain), so the residual shrinks by about the strain each time;
for sags of tens of percent it stops shrinking, and the best F_rest found is kept (converged False).
Anchored particles are rebased too: those at the clamp's face carry part of the load.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import numpy as np

from .config import BoxCollider, SimConfig
from .particles import ParticleState
from .solver import MPMSolver

log = logging.getLogger(__name__)


@dataclass
class RestState:
    F: np.ndarray           # (N,3,3) rest deformation gradient, caller's order
    residual: float         # max drift from the captured shape after the last solve / object size
    iterations: int         # quasi-static solves run
    substeps: int           # substeps simulated in all of them
    seconds: float          # wall time
    converged: bool


def static_config(config: SimConfig, chunk_dt: float) -> SimConfig:
    """The scene's config with only the static loads: gravity, walls, ground and the colliders frozen
    at their t = 0 place; no pokes or winds (the solve sets its own damping)."""
    cfg = copy.deepcopy(config)
    cfg.pokes, cfg.winds, cfg.damping = [], [], 0.0
    cfg.colliders = [BoxCollider(times=(0.0,), centers=(tuple(c.centers[0]),), half_extents=c.half_extents,
                                 kind=c.kind, friction=c.friction) for c in config.colliders]
    cfg.fps = 1.0 / chunk_dt
    return cfg.validate()


def solve_rest_state(particles: ParticleState, config: SimConfig, device: str = "cpu", tolerance: float = 1e-3,
                     max_iterations: int = 4, max_substeps: int = 200_000, chunk: int = 8,
                     progress=None) -> RestState:
    """Rest deformation gradients for `particles` under config.gravity (see the module docstring).

    tolerance: residual (drift / object size) to reach; max_iterations: quasi-static solves at most;
    max_substeps: substeps over all solves; chunk: substeps between kinetic-energy checks.
    progress(iteration, residual) is called after each solve."""
    started = time.monotonic()
    X = np.asarray(particles.positions, np.float64)
    size = float(np.ptp(X, axis=0).max()) or 1.0
    n = len(X)
    F_rest = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
    probe = MPMSolver(_at_rest(particles, F_rest), config, device, sort_every=None)
    dt = probe.substep_dt if config.substep_dt is None else config.substep_dt
    cfg = static_config(config, chunk * dt)
    cfg.substep_dt = dt
    mass = particles.rho * probe.volume
    used, it, omega = 0, 0, None
    best = (float("inf"), F_rest)
    for it in range(1, max_iterations + 1):
        sim = MPMSolver(_at_rest(particles, F_rest), cfg, device, sort_every=None)  # fixed order: compare x
        n_used, omega = _relax(sim, mass, tolerance * size, max_substeps - used, omega)
        used += n_used
        state = sim.get_state()
        residual = float(np.abs(sim.grid.to_world(state["x"]) - X).max()) / size
        if progress:
            progress(it, residual)
        log.info("rest state: solve %d, residual %.3g of the object's size", it, residual)
        if residual >= best[0]:
            break  # large sag: the rebase stopped helping; keep the best one
        best = (residual, F_rest)
        if residual <= tolerance or used >= max_substeps:
            break
        F_rest = state["F"].astype(np.float32)
    residual, F_rest = best
    return RestState(F_rest, residual, it, used, time.monotonic() - started, residual <= tolerance)


def is_supported(particles: ParticleState, config: SimConfig, grid) -> bool:
    """Whether anything can hold the object against gravity at t = 0: an anchor, or material within a
    cell of the ground, of the domain wall gravity points to, or of a collider. A free-falling object
    has no rest state."""
    if np.asarray(particles.anchor, bool).any():
        return True
    g = np.asarray(config.gravity, np.float64)
    if not g.any():
        return False
    x = np.asarray(particles.positions, np.float64)
    reach = grid.dx
    if config.ground is not None and g[2] < 0 and x[:, 2].min() - config.ground.height < reach:
        return True
    for a in np.nonzero(g)[0]:
        gap = x[:, a].min() - grid.domain_min[a] if g[a] < 0 else grid.domain_max[a] - x[:, a].max()
        if gap < reach:
            return True
    for c in config.colliders:
        lo = np.asarray(c.centers[0]) - np.asarray(c.half_extents) - reach
        hi = np.asarray(c.centers[0]) + np.asarray(c.half_extents) + reach
        if np.all((x > lo) & (x < hi), axis=1).any():
            return True
    return False


def _at_rest(p: ParticleState, F: np.ndarray) -> ParticleState:
    return ParticleState(p.positions, E=p.E, nu=p.nu, rho=p.rho, material_id=p.material_id, anchor=p.anchor,
                         volume=p.volume, cov0=p.cov0, F0=F)


def _relax(sim, mass: np.ndarray, settled: float, budget: int, omega: float | None) -> tuple[int, float | None]:
    """Settle under the static loads; returns (substeps used, omega).

    The first mode's angular frequency omega is measured on the first solve (the kinetic energy of
    the release from rest peaks a quarter period in), then the grid damping is set to 2 omega (about
    critical for that mode; faster modes decay at least as fast). Stops when the remaining motion,
    max |v| / omega, is below settled / 10."""
    used, ke_prev = 0, 0.0
    sim.config.damping = 0.0 if omega is None else 2.0 * omega
    while used < budget:
        sim.step_frame(outputs=False)
        used += sim.n_substeps_per_frame
        v = sim.state.v.numpy()
        if omega is None:
            ke = float((mass * (v * v).sum(axis=1)).sum())
            if ke < ke_prev:  # the first peak: a quarter period of the slowest mode
                omega = 0.5 * np.pi / sim.time
                sim.config.damping = 2.0 * omega
            ke_prev = ke
        elif float(np.sqrt((v * v).sum(axis=1).max())) / omega < 0.1 * settled:
            break
    return used, omega
