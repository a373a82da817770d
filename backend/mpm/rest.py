"""Rest state under gravity: the deformation gradients that make the captured shape an equilibrium.

A capture shows an object already loaded by gravity (and held by its anchors), so simulating it from
F = I lets it sag. The rest state is found by quasi-static solves and rebasing:

1. relax: from the captured positions X with the current F_rest, simulate under gravity with kinetic
   damping (every particle is stopped each time the kinetic energy has peaked, see _relax) until what
   is left to move is below a quarter of the tolerance; the particles settle at x_k with F_k;
2. the residual is max |x_k - X| / object size: how far the object would move if left alone;
3. rebase: the full step is F_k with the settling's local rotation taken off (R^T F_k, R the polar
   rotation of the increment F_k F_rest^-1): the stress that held x_k, carried by the captured shape X
   and turned back with the material it belongs to. F_rest moves by `step` times that step.

Repeat until the residual is below `tolerance`. The step starts at 1 and then follows the residuals: a
slender part that sags mostly because it leans (a stem whose head hangs to one side) is held by a
bending stress that grows with the lean, so the full step over-corrects it, and the next residual points
the other way. The ratio of two successive residuals measures that gain, and the next step is its
inverse (a secant step; between 0.2 and 1.5). Thin parts (leaves, stems) sag mostly by rotating; taking
the settling's local turn off keeps their bending stress along the captured shape instead of along the
sagged one. The best F_rest found is kept (converged False if it is not below the tolerance). Anchored
particles are rebased too: those at the clamp's face carry part of the load.

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

from ..protocol import SIMULATION_DEFAULTS
from .config import BoxCollider, SimConfig
from .particles import ParticleState
from .solver import MPMSolver

log = logging.getLogger(__name__)


# Past either, an unconverged rest state is an object that cannot stand at its stiffness: it keeps
# moving by more than this share of its size, or holding its shape takes more than this strain.
CANNOT_STAND_RESIDUAL = 0.1
CANNOT_STAND_STRAIN = 0.3
DEFAULTS = SIMULATION_DEFAULTS["rest_state"]  # the job's rest_state section


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


def solve_rest_state(particles: ParticleState, config: SimConfig, device: str = "cpu",
                     tolerance: float = DEFAULTS["tolerance"], max_iterations: int = DEFAULTS["max_iterations"],
                     max_substeps: int = DEFAULTS["max_substeps"], chunk: int = 8, progress=None) -> RestState:
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
    used, it, step, last = 0, 0, 1.0, None
    best = (float("inf"), F_rest)
    for it in range(1, max_iterations + 1):
        sim = MPMSolver(_at_rest(particles, F_rest), cfg, device, sort_every=None)  # fixed order: compare x
        used += _relax(sim, mass, tolerance * size, max_substeps - used)
        state = sim.get_state()
        r = (sim.grid.to_world(state["x"]) - X).ravel()
        residual = float(np.abs(r).max()) / size
        if progress:
            progress(it, residual)
        log.info("rest state: solve %d, residual %.3g of the object's size (step %.2f)", it, residual, step)
        if residual < best[0]:
            best = (residual, F_rest)
        if residual <= tolerance or used >= max_substeps or it == max_iterations:
            break
        if last is not None:
            step = secant_step(last, r, step)
        last = r
        F_next = _stepped(F_rest, unrotated(state["F"], F_rest), step)
        # A particle the solve left untouched (a frozen anchor, core.frozen_anchors) keeps its F exactly (the
        # SVD above would round I to within 1e-16 of I), so it stays frozen in the next solve.
        same = (state["F"] == F_rest).all(axis=(1, 2))
        F_rest = np.where(same[:, None, None], F_rest, F_next)
    strain = rest_strain(F_rest)
    residual, F_rest = best
    return RestState(F_rest, residual, it, used, time.monotonic() - started, residual <= tolerance, strain)


# The secant step's bounds: below, progress is too slow to be worth a solve; above, one noisy ratio
# could throw the state far off.
STEP_RANGE = (0.2, 1.5)


def secant_step(r_before: np.ndarray, r_after: np.ndarray, step: float) -> float:
    """The next rebase step from the residuals before and after one of size `step`.

    Along the slowest-converging direction a step of size s scales the residual by (1 - s k), so
    rho = <r_after, r_before> / |r_before|^2 gives the gain k = (1 - rho) / s, and 1 / k would have
    zeroed it. A residual that grew the same way (k <= 0) halves the step."""
    denom = float(r_before @ r_before)
    if denom == 0.0:
        return step
    gain = (1.0 - float(r_after @ r_before) / denom) / step
    if not np.isfinite(gain) or gain <= 0.0:
        return max(STEP_RANGE[0], 0.5 * step)
    return float(np.clip(1.0 / gain, *STEP_RANGE))


def _stepped(F: np.ndarray, F_full: np.ndarray, step: float) -> np.ndarray:
    """F moved by `step` towards F_full; a step that would turn some F inside out (det <= 0) is halved."""
    F, F_full = np.asarray(F, np.float64), np.asarray(F_full, np.float64)
    while True:
        out = F + step * (F_full - F)
        if (np.linalg.det(out) > 0).all() or step <= 1e-3:
            return out.astype(np.float32)
        step *= 0.5


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


def _relax(sim, mass: np.ndarray, settled: float, budget: int) -> int:
    """Settle under the static loads by kinetic damping; returns the substeps used.

    The motion runs undamped, and each time the kinetic energy has peaked (it fell since the last check)
    every particle is stopped (v = 0, C = 0): at a peak of the dominant motion the object passes its
    equilibrium, so each stop takes out that motion's energy. Unlike a viscous damping it needs no
    frequency: a damping fitted to one mode overdamps slower ones into a creep (on the plant sample a
    damped relax took 31.8k substeps, kinetic damping 6.2k to the same shape).

    Stops when the last move and what is left to go are below settled / 4, so the residual read after
    it is good to a quarter of the tolerance: the moves between stops shrink about geometrically (by
    q = this move / the last one), so after a move of d about d q / (1 - q) is left (max over the
    particles). A small move alone is not enough: a small load left over after a good
    rebase moves the object slowly but still far."""
    used, ke_prev, moves = 0, 0.0, []
    mass = mass[sim.simulated]  # the device arrays hold the simulated particles only
    sim.config.damping = 0.0
    x_stop = sim.state.x.numpy().copy()
    while used < budget:
        sim.step_frame(outputs=False)
        used += sim.n_substeps_per_frame
        v = sim.state.v.numpy()
        ke = float(mass @ (v * v).sum(axis=1))
        if ke < ke_prev:
            sim.state.v.zero_()
            sim.state.C.zero_()
            x = sim.state.x.numpy()
            moves.append(float(np.abs(x - x_stop).max()))
            x_stop = x.copy()
            if len(moves) >= 2 and moves[-1] + _left(moves[-2], moves[-1]) < 0.25 * settled:
                break
            ke = 0.0
        ke_prev = ke
    return used


def _left(before: float, last: float) -> float:
    """What is left to move after moves `before`, `last` shrinking geometrically (inf if not shrinking)."""
    q = last / before if before > 0.0 else 0.0
    return last * q / (1.0 - q) if q < 1.0 else float("inf")
