"""Forward MPM solver for baking: no tape, all buffers allocated once, one host sync per frame."""

from __future__ import annotations

import logging
import math

import numpy as np
import warp as wp

from .config import MaterialModel, SimConfig
from .core import SimCore, State, init_warp, initial_state
from .errors import SimulationDiverged
from .grid import SNOW_HARDENING_RANGE, GridMapping, SubstepPlan, lame, p_wave_speed, plan_substeps
from .kernels_forward import max_speed
from .particles import ParticleState, rest_shape_matrices
from .splats import FrameOutput, SplatOutputs

log = logging.getLogger(__name__)


def max_wave_speed(E: np.ndarray, nu: np.ndarray, rho: np.ndarray, material_id: np.ndarray) -> float:
    """Largest P-wave speed (m/s), counting snow at its maximum hardening."""
    c = p_wave_speed(E, nu, rho)
    c = np.where(material_id == int(MaterialModel.SNOW), c * math.sqrt(SNOW_HARDENING_RANGE[1]), c)
    return float(c.max())


class MPMSolver:
    """MLS-MPM simulation of one particle set, advanced a frame at a time.

    Frame f (0-based, counted by `.frame`) ends at time (f + 1) / fps. The substep count is
    re-planned after every frame from the CFL bound with the current maximum speed (unless
    config.substep_dt is set).
    """

    def __init__(self, particles: ParticleState, config: SimConfig | None = None, device: str = "cpu"):
        self.device = init_warp(device)
        self.config = config if config is not None else SimConfig()
        self.config.validate()
        ps = particles
        self.n = ps.n
        self.grid = GridMapping.build(self.config, ps.positions)
        vol = ps.volume if ps.volume is not None else np.full(self.n, self.grid.default_volume(ps.positions))
        self.volume = vol
        mu, lam = lame(ps.E, ps.nu)
        dev = self.device
        f32 = np.float32
        self.mu = wp.array(mu.astype(f32), dtype=float, device=dev)
        self.lam = wp.array(lam.astype(f32), dtype=float, device=dev)
        self.mass = wp.array((ps.rho * vol).astype(f32), dtype=float, device=dev)
        self.vol = wp.array(vol.astype(f32), dtype=float, device=dev)
        self.c_max = max_wave_speed(ps.E, ps.nu, ps.rho, ps.material_id)
        self.core = SimCore(self.config, self.grid, ps.material_id, ps.anchor, dev)
        self.state = State.from_numpy(initial_state(ps.positions, ps.velocity, ps.material_id), dev)
        self.core.set_fixed_nodes(self.state.x, self.mass)
        self.grid_mv = wp.zeros(self.core.n_nodes, dtype=wp.vec4, device=dev)
        self.grid_v = wp.zeros(self.core.n_nodes, dtype=wp.vec3, device=dev)
        self._speed = wp.zeros(1, dtype=float, device=dev)
        self.splats = SplatOutputs(rest_shape_matrices(ps.cov0, vol), dev)
        self.frame = 0
        self._plan = self._make_plan(float(np.linalg.norm(ps.velocity, axis=1).max()))

    # -- substep planning -------------------------------------------------------------------
    def _make_plan(self, v_max: float) -> SubstepPlan:
        plan = plan_substeps(self.config, self.grid.dx, self.c_max, v_max)
        if plan.capped:
            log.warning("CFL bound needs %d substeps per frame; max_substeps_per_frame caps it at %d",
                        plan.n_required, plan.n)
        return plan

    @property
    def n_substeps_per_frame(self) -> int:
        return self._plan.n

    @property
    def substep_dt(self) -> float:
        return self._plan.dt

    @property
    def time(self) -> float:
        """Simulation time (s) of the current state."""
        return self.frame * self.config.frame_dt

    # -- stepping ---------------------------------------------------------------------------
    def step_frame(self, outputs: bool = True) -> FrameOutput:
        """Advance one frame. outputs=False returns positions only (skips the splat SVDs)."""
        plan = self._plan
        core, st = self.core, self.state
        core.reset_bad()
        t0 = self.time
        for k in range(plan.n):
            core.substep(st, st, self.mu, self.lam, self.mass, self.vol, self.grid_mv, self.grid_v,
                         t0 + k * plan.dt, plan.dt, k, clear=True)
        bad = core.first_bad_substep()
        if bad is not None:
            self._diverged(bad, plan)
        self._speed.zero_()
        wp.launch(max_speed, self.n, inputs=[st.v, self._speed], device=self.device)
        v_max = float(self._speed.numpy()[0])
        if not math.isfinite(v_max) or v_max > 1e37:
            self._diverged(plan.n - 1, plan)
        self.frame += 1
        if self.config.substep_dt is None:
            self._plan = self._make_plan(v_max)
        positions = st.x.numpy().copy()
        if not outputs:
            return FrameOutput(frame=self.frame - 1, time=self.time, positions=positions)
        return self.splats.compute(st.F, self.frame - 1, self.time, positions)

    def _diverged(self, substep: int, plan: SubstepPlan) -> None:
        # The grid may hold garbage now; clear it so a set_state() resume starts clean.
        self.grid_mv.zero_()
        if plan.capped:
            why = (f"The CFL bound needs {plan.n_required} substeps per frame but max_substeps_per_frame "
                   f"capped it at {plan.n} (dt = {plan.dt:.3g} s).")
        else:
            why = f"Substep dt = {plan.dt:.3g} s ({plan.n} per frame), max P-wave speed {self.c_max:.3g} m/s."
        raise SimulationDiverged(self.frame, substep, why)

    # -- checkpoints ------------------------------------------------------------------------
    def get_state(self) -> dict:
        """Numpy copy of the particle state plus the frame index (for checkpoints / resume)."""
        d = self.state.numpy()
        d["frame"] = np.array(self.frame, dtype=np.int64)
        return d

    def set_state(self, d: dict) -> None:
        """Restore a state written by get_state()."""
        for key, shape in (("x", (self.n, 3)), ("v", (self.n, 3)), ("C", (self.n, 3, 3)), ("F", (self.n, 3, 3)),
                           ("plastic", (self.n,))):
            if key not in d:
                raise ValueError(f"state is missing {key!r}")
            arr = np.asarray(d[key])
            if arr.shape != shape or not np.isfinite(arr).all():
                raise ValueError(f"state[{key!r}]: expected finite array of shape {shape}, got {arr.shape}")
        fresh = State.from_numpy(d, self.device)
        self.state.assign(fresh)
        self.frame = int(d.get("frame", self.frame))
        self.grid_mv.zero_()
        if self.config.substep_dt is None:
            self._plan = self._make_plan(float(np.linalg.norm(np.asarray(d["v"]), axis=1).max()))
