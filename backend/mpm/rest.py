"""Rest state under gravity: the deformation gradients that make the captured shape an equilibrium.

A capture shows an object already loaded by gravity (and held by its anchors), so simulating it from
F = I lets it sag. The rest state is found by damped quasi-static solves and rebasing:

1. relax: from the captured positions X with the current F_rest, simulate under gravity with about
   critical damping of the first mode (its frequency is measured on the first solve, see _relax) until the
   remaining motion is below a tenth of the tolerance; the particles settle at x_k with F_k;
2. the residual is max |x_k - X| / object size: how far the object would move if left alone;
3. rebase: F_rest = R^T F_k, where R is the local rotation of the settling (the polar rotation of the
   increment F_k F_rest^-1). The stress that held x_k is carried by the captured shape X, turned back
   with the material it belongs to.

Repeat until the residual is below `tolerance`. Thin parts (leaves, stems) sag mostly by rotating;
taking the settling's local turn off keeps their bending stress along the captured shape instead of
along the sagged one. If the residual stops shrinking, the best F_rest found is kept (converged False).
Anchored particles are rebased too: those at the clamp's face carry part of the load.

An object that cannot stand at its stiffness (a stem too soft for the head it carries: the upright
shape is not a stable equilibrium) falls over in every solve; the residual stays a sizeable fraction of
its size and converged is False. `strain`, the largest principal strain that the last solve's F_rest
holds, says how hard the shape is to hold: tens of percent are more than the material really takes.
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


# Past either, an unconverged rest state is an object that cannot stand at its stiffness: it keeps
# moving by more than this share of its size, or holding its shape takes more than this strain.
CANNOT_STAND_RESIDUAL = 0.1
CANNOT_STAND_STRAIN = 0.3


@dataclass
class RestState:
    F: np.ndarray           # (N,3,3) rest deformation gradient, caller's order
    residual: float         # max drift from the captured shape after the last solve / object size
    iterations: int         # quasi-static solves run
    substeps: int           # substeps simulated in all of them
    seconds: float          # wall time
    converged: bool
    strain: float = 0.0     # largest |principal stretch - 1| the last solve found holding the shape takes

    @property
    def stands(self) -> bool:
        return self.converged or (self.residual <= CANNOT_STAND_RESIDUAL and self.strain <= CANNOT_STAND_STRAIN)


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
        F_rest = unrotated(state["F"], F_rest)
    strain = rest_strain(F_rest)
    residual, F_rest = best
    return RestState(F_rest, residual, it, used, time.monotonic() - started, residual <= tolerance, strain)


def unrotated(F: np.ndarray, F_before: np.ndarray) -> np.ndarray:
    """F with the rotation of its increment over F_before taken off: R^T F, where R is the polar rotation
    of F F_before^-1 (the material's local turn while it settled)."""
    F = np.asarray(F, np.float64)
    U, _, Vt = np.linalg.svd(F @ np.linalg.inv(np.asarray(F_before, np.float64)))
    R = U @ Vt
    flip = np.linalg.det(R) < 0  # a reflection is not a rotation: turn the smallest singular direction back
    U[flip, :, 2] *= -1
    R[flip] = U[flip] @ Vt[flip]
    return (R.transpose(0, 2, 1) @ F).astype(np.float32)


def rest_strain(F: np.ndarray) -> float:
    """The largest principal strain of the rest state: max |singular value of F - 1|."""
    return float(np.abs(np.linalg.svd(np.asarray(F, np.float64), compute_uv=False) - 1.0).max()) if len(F) else 0.0


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

    The grid damping is 2 omega, about critical for the slowest mode that the load moves; faster modes
    are overdamped and decay at least as fast. On the first solve (omega None) omega comes from the
    Rayleigh quotient of the sag so far under gravity g: omega^2 = sum m g.u / sum m |u|^2. Early on it
    is large (every part is still falling freely); as the sag takes its shape it falls to the first
    mode's frequency, the one that matters. (The first peak of the kinetic energy marks a quarter period
    of whichever mode moves most at first: on a plant that is a stiff one, whose damping then overdamps
    the leaves' droop into a creep of tens of seconds.) Later solves keep the first one's omega. Stops
    when the remaining motion, max |v| / omega, is below settled / 10."""
    used, ke_prev, peaked, history = 0, 0.0, False, []
    g = np.asarray(sim.config.gravity, np.float64)
    x0 = sim.state.x.numpy().astype(np.float64)
    measure = omega is None
    sim.config.damping = 0.0 if omega is None else 2.0 * omega
    while used < budget:
        sim.step_frame(outputs=False)
        used += sim.n_substeps_per_frame
        if measure:
            u = sim.state.x.numpy() - x0
            work, inertia = float(mass @ (u @ g)), float(mass @ (u * u).sum(axis=1))
            if work > 0.0 and inertia > 0.0:
                omega = float(np.sqrt(work / inertia))
                sim.config.damping = 2.0 * omega
                history.append((sim.time, omega))
        v = sim.state.v.numpy()
        speed2 = (v * v).sum(axis=1)
        ke = float(mass @ speed2)
        peaked, ke_prev = peaked or ke < ke_prev, ke
        # Released from rest, the motion speeds up before it slows down: no stop before the kinetic energy
        # has peaked once and a radian of the first mode has passed; while measuring, not before omega has
        # held within 2% for half a period (early on, a part that barely moved yet makes the quotient large).
        ready = peaked and omega and sim.time * omega > 1.0 and (not measure or _steady(history, sim.time))
        if ready and float(np.sqrt(speed2.max())) / omega < 0.1 * settled:
            break
    return used, omega


def _steady(history: list, now: float) -> bool:
    """Whether the measured omega is the same (within 2%) as half a period ago."""
    omega = history[-1][1]
    earlier = [w for t, w in history if t <= now - np.pi / omega]
    return bool(earlier) and abs(earlier[-1] - omega) < 0.02 * omega
