"""From a job's scene arrays to simulator particles: defaults, anchors, splat covariances, interior fill.

The object's own N points come first; interior fill particles are appended after them. They are
simulated (they give a hollow splat shell its mass and stiffness) but never rendered or baked, and
they take their material and anchoring from the nearest visible point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .. import protocol
from ..geometry.fill import describe_fill, fill_scene
from ..geometry.shape import splat_shape
from ..jobctl import Reporter
from ..mpm import covariance_from_splats
from ..mpm.grid import p_wave_speed


@dataclass
class SceneParticles:
    positions: np.ndarray  # (M, 3) float32, world
    E: np.ndarray
    nu: np.ndarray
    rho: np.ndarray
    material_id: np.ndarray  # (M,) int32
    anchor: np.ndarray  # (M,) bool
    velocity: np.ndarray  # (M, 3)
    cov0: np.ndarray  # (M, 3, 3) rest covariance of each splat
    lock: np.ndarray  # (M,) bool: the estimator keeps these materials
    n_visible: int
    rest_rotations: np.ndarray  # (N, 4) wxyz, the visible splats at rest
    rest_scales: np.ndarray  # (N, 3) linear

    @property
    def n_total(self) -> int:
        return len(self.positions)

    @property
    def n_fill(self) -> int:
        return self.n_total - self.n_visible

    def solver_inputs(self) -> dict:
        return dict(positions=self.positions, E=self.E, nu=self.nu, rho=self.rho, material_id=self.material_id,
                    anchor=self.anchor, velocity=self.velocity, cov0=self.cov0)

    def rest_frame(self) -> dict:
        n = self.n_visible
        return {"positions": self.positions[:n], "rotations": self.rest_rotations, "scales": self.rest_scales,
                "time": np.float32(0.0)}

    def visible(self, frame) -> dict:
        """The baked arrays of one solver frame: the object's own points only."""
        n = self.n_visible
        return {"positions": np.asarray(frame.positions[:n], np.float32),
                "rotations": np.asarray(frame.rotations[:n], np.float32),
                "scales": np.asarray(frame.scales[:n], np.float32),
                "time": np.float32(frame.time)}


def build_particles(scene: dict, sim: dict, reporter: Reporter | None = None) -> SceneParticles:
    pos = np.asarray(scene["positions"], np.float32)
    n = len(pos)
    model = protocol.MATERIAL_MODELS.index(sim.get("material_model", protocol.SIMULATION_DEFAULTS["material_model"]))
    log_scale, quat = splat_shape(scene, pos)
    base = SceneParticles(
        positions=pos,
        E=_per_point(scene, "youngs_modulus", protocol.DEFAULT_E, n),
        nu=_per_point(scene, "poisson_ratio", protocol.DEFAULT_NU, n),
        rho=_per_point(scene, "density", protocol.DEFAULT_RHO, n),
        material_id=np.asarray(scene.get("material_id", np.full(n, model)), np.int32),
        anchor=np.asarray(scene.get("anchor", np.zeros(n)), bool),
        velocity=np.asarray(scene.get("initial_velocity", np.zeros((n, 3))), np.float32),
        cov0=np.asarray(covariance_from_splats(log_scale, quat), np.float32),
        lock=np.asarray(scene.get("material_lock", np.zeros(n)), bool),
        n_visible=n,
        rest_rotations=quat,
        rest_scales=np.exp(log_scale).astype(np.float32),
    )
    check_physical(base, reporter)
    cap_anchored_stiffness(base, reporter)
    fill = sim.get("fill") or {}
    if fill.get("enabled", protocol.FILL_AUTO) is not False:
        base = add_fill(base, scene, fill, sim, reporter)
    return base


# Inputs no real material has: refused (exit 2) before anything is simulated.
MIN_DENSITY = 1.0  # kg/m^3 (air is 1.2)
MIN_POISSON = -0.9  # auxetic foams reach about -0.8; below -0.9 the bulk modulus all but vanishes
MAX_MACH = 10.0  # initial speed / P-wave speed; above 1 is a shock, warned


def check_physical(p: SceneParticles, reporter: Reporter | None) -> None:
    """Refuse (BadJob, exit 2) or warn, with the reason, on unphysical densities, Poisson ratios and speeds."""
    def refuse(what: str, bad: np.ndarray, why: str) -> None:
        raise protocol.BadJob(f"{int(bad.sum())} of {len(bad)} points have {what}: {why}")

    if (p.rho < MIN_DENSITY).any():
        refuse(f"a density below {MIN_DENSITY:g} kg/m^3 (lowest {float(p.rho.min()):.3g})", p.rho < MIN_DENSITY,
               "lighter than air; no solid is. Check the density attribute (kg/m^3: water is 1000).")
    if (p.nu <= MIN_POISSON).any():
        refuse(f"a Poisson ratio at or below {MIN_POISSON:g} (lowest {float(p.nu.min()):.3g})", p.nu <= MIN_POISSON,
               "such a material has almost no resistance to volume change and collapses. Use -0.9 < nu < 0.5.")
    nu = np.clip(p.nu, MIN_POISSON + 1e-6, 0.499)
    mach = np.linalg.norm(p.velocity, axis=1) / p_wave_speed(p.E, nu, p.rho)
    if (mach > MAX_MACH).any():
        refuse(f"an initial speed above {MAX_MACH:g}x the material's wave speed (up to {float(mach.max()):.3g}x)",
               mach > MAX_MACH, "no material holds together at that speed. Lower the initial velocity or raise E.")
    if (mach > 1.0).any() and reporter:
        reporter.warning(f"{int((mach > 1).sum())} points start faster than the material's wave speed "
                         f"(up to {float(mach.max()):.2g}x): expect a shock and heavy substepping")


def cap_anchored_stiffness(p: SceneParticles, reporter: Reporter | None) -> None:
    """Anchored points are held still, so their stiffness only matters where they meet free points. Left
    as given, a rigid pot (1e8 Pa) would set the CFL substep for the whole object (dozens of times more
    substeps); capped at the stiffest free point it no longer does."""
    free = ~p.anchor
    if not free.any() or not p.anchor.any():
        return
    cap = float(p.E[free].max())
    stiff = p.anchor & (p.E > cap)
    if stiff.any():
        p.E = p.E.copy()  # never write into the job's own arrays
        p.E[stiff] = cap
        if reporter:
            reporter.warning(f"{int(stiff.sum())} anchored points are stiffer than any free point; they are "
                             f"simulated at {cap:.3g} Pa, which does not change the motion but saves substeps")


def held_still_text(n_total: int, n_simulated: int) -> str:
    """What the solvers' frozen anchors (mpm.core.frozen_anchors) mean for the user, or "" when none."""
    n_still = n_total - n_simulated
    if not n_still:
        return ""
    return (f"{n_still} anchored points touch only fixed grid nodes: they hold still and are left out of the "
            f"simulation ({n_simulated} of {n_total} simulated)")


def _per_point(scene: dict, name: str, default: float, n: int) -> np.ndarray:
    return np.asarray(scene[name], np.float32) if name in scene else np.full(n, default, np.float32)


def add_fill(p: SceneParticles, scene: dict, fill: dict, sim: dict, reporter: Reporter | None) -> SceneParticles:
    """Append interior particles; each copies the material and anchoring of its nearest visible point.

    The fill comes from the scene's own arrays (fill_scene), exactly as the add-on's preview counts it."""
    if reporter:  # a stage of its own: a fill that runs out of memory is reported as the fill's
        reporter.stage("fill", "Looking for a hollow interior to fill")
    extra, info = fill_scene(scene, fill, int(sim.get("n_grid", 64)))
    if reporter:
        reporter.stage("fill", describe_fill(info), data={k: info[k] for k in ("n_fill", "shape", "closed_fraction",
                                                                        "hollow_fraction") if k in info})
    extra = np.asarray(extra, np.float32).reshape(-1, 3)
    if len(extra) == 0:
        return p
    _, nearest = cKDTree(p.positions).query(extra)
    # Fill particles are round: an isotropic covariance the size of the fill spacing.
    spacing = float(np.cbrt(np.prod(np.ptp(extra, axis=0) + 1e-9) / len(extra))) if len(extra) > 1 else 0.01
    cov_fill = np.tile(np.eye(3, dtype=np.float32) * (0.5 * spacing) ** 2, (len(extra), 1, 1))

    def cat(a, b):
        return np.concatenate([a, b], axis=0)

    return SceneParticles(
        positions=cat(p.positions, extra),
        E=cat(p.E, p.E[nearest]),
        nu=cat(p.nu, p.nu[nearest]),
        rho=cat(p.rho, p.rho[nearest]),
        material_id=cat(p.material_id, p.material_id[nearest]),
        anchor=cat(p.anchor, p.anchor[nearest]),
        velocity=cat(p.velocity, p.velocity[nearest]),
        cov0=cat(p.cov0, cov_fill),
        lock=cat(p.lock, p.lock[nearest]),
        n_visible=p.n_visible,
        rest_rotations=p.rest_rotations,
        rest_scales=p.rest_scales,
    )

