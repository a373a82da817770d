"""Forward MPM solver for baking: no tape, all buffers allocated once, one host sync per frame."""

from __future__ import annotations

import logging
import math

import numpy as np
import warp as wp

from .config import MaterialModel, SimConfig
from .core import SimCore, State, fixed_nodes, frozen_anchors, init_warp, initial_state
from .errors import SimulationDiverged
from .grid import SNOW_HARDENING_RANGE, GridMapping, displaced, SubstepPlan, lame, p_wave_speed, plan_substeps
from .kernels_forward import max_speed
from .particles import ParticleState, rest_shape_matrices
from .splat_frames import FrameOutput, SplatOutputs

log = logging.getLogger(__name__)

_STATE_SHAPES = {"x": (3,), "v": (3,), "C": (3, 3), "F": (3, 3), "plastic": (), "x_err": (3,),
                 "F_err": (3, 3)}


# Nominal forward throughput (particle-substeps per second) for projecting bake times; measured by
# benchmarks/mpm.py (2-core CPU: about 2.5 M; a CUDA GPU: tens of millions).
THROUGHPUT = {"cpu": 2.0e6, "cuda": 5.0e7}


def projected_seconds(n_particles: int, substeps: int, device: str) -> float:
    """About how long a forward simulation of `substeps` substeps takes (s)."""
    rate = THROUGHPUT["cuda" if str(device).startswith("cuda") else "cpu"]
    return float(n_particles) * float(substeps) / rate


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

    Internally the particles are kept sorted by grid cell (re-sorted every `sort_every` frames;
    None disables it) so P2G / G2P touch memory in order; every input and output uses the
    caller's particle order. Positions are simulated domain-local (float32 metres from the grid's
    first node) and converted from / to world space (float64) at the boundary. Grid work covers only the node box around the particles, refreshed
    every `box_every` substeps (default 4 on CPU, 8 on CUDA: one small device read each time).
    On the CPU the substeps run on `config.threads` threads (see threads.py).

    Anchored particles that can neither move nor move anything (core.frozen_anchors) are left out of the
    substeps (freeze_anchors=False keeps them, to compare); the outputs and states still hold every particle.
    """

    def __init__(self, particles: ParticleState, config: SimConfig | None = None, device: str = "cpu",
                 sort_every: int | None = 16, box_every: int | None = None, freeze_anchors: bool = True):
        self.device = init_warp(device)
        self.config = config if config is not None else SimConfig()
        self.config.validate()
        ps = particles
        self.n = ps.n
        self.sort_every = sort_every
        self.box_every = max(1, int(box_every)) if box_every else (8 if str(device).startswith("cuda") else 4)
        self.grid = GridMapping.build(self.config, ps.positions)
        vol = ps.volume if ps.volume is not None else np.full(self.n, self.grid.default_volume(ps.positions))
        self.volume = vol
        mu, lam = lame(ps.E, ps.nu)
        local = self.grid.to_local(ps.positions)
        # the fixed nodes, picked with every particle's mass (a bake's never change), and the anchored
        # particles they hold whole, which the substeps leave out
        fixed = fixed_nodes(self.grid, self.device, (local, ps.rho * vol, ps.anchor)) if ps.anchor.any() else None
        frozen = (frozen_anchors(local, ps.anchor, ps.material_id, ps.F0, self.grid, self.config, fixed)
                  if freeze_anchors else np.zeros(self.n, bool))
        self._simulated = np.flatnonzero(~frozen)  # the caller's indices of the particles the substeps move
        self.n_simulated = len(self._simulated)
        live = self._simulated
        self.c_max = max_wave_speed(ps.E[live], ps.nu[live], ps.rho[live], ps.material_id[live])
        # Per-particle constants in the caller's order; device copies follow the sorted order.
        self._constants = {
            "mu": mu.astype(np.float32), "lam": lam.astype(np.float32),
            "mass": (ps.rho * vol).astype(np.float32), "vol": vol.astype(np.float32),
            "material": ps.material_id.astype(np.int32), "anchor": ps.anchor.astype(np.int32),
            "A0": rest_shape_matrices(ps.cov0, vol, ps.F0),
        }
        dev = self.device
        n = self.n_simulated
        self.mu, self.lam, self.mass, self.vol = (wp.zeros(n, dtype=float, device=dev) for _ in range(4))
        self.core = SimCore(self.config, self.grid, ps.material_id[live], ps.anchor[live], dev)
        self.n_threads = self.core.use_threads(self.config.threads)
        self.splats = SplatOutputs(self._constants["A0"][live], dev)
        self.state = State.zeros(n, dev)
        self._order = live
        self._world0, self._local0 = ps.positions, local.astype(np.float64)
        start = initial_state(local, ps.velocity, ps.material_id, ps.F0)
        # What the outputs and states show for the frozen particles, every frame: their starting state (v = 0,
        # as an anchored particle's after its first substep) and splats.
        self._frozen = np.flatnonzero(frozen)
        self._held = {key: start[key][self._frozen] for key in _STATE_SHAPES}
        self._held["v"][:] = 0.0
        self._held_splats = None if not frozen.any() else SplatOutputs(self._constants["A0"][frozen], dev).compute(
            wp.array(self._held["F"], dtype=wp.mat33, device=dev), 0, 0.0, ps.positions[frozen])
        self._load(start, self._sorted_order(local))
        if fixed is not None:
            self.core.use_fixed_nodes(fixed)
        self.grid_mv = wp.zeros(self.core.n_nodes, dtype=wp.vec4, device=dev)
        self.grid_v = wp.zeros(self.core.n_nodes, dtype=wp.vec3, device=dev)
        self._speed = wp.zeros(1, dtype=float, device=dev)
        self.frame = 0
        self._plan = self._make_plan(float(np.linalg.norm(ps.velocity, axis=1).max()))

    # -- particle order ---------------------------------------------------------------------
    @property
    def simulated(self) -> np.ndarray:
        """The caller's index of each simulated particle, in the order the device arrays hold them."""
        return self._order

    def _sorted_order(self, local: np.ndarray) -> np.ndarray:
        """Simulated particles' indices sorted by the flat index of their grid cell (stable); domain-local
        positions of every particle."""
        live = self._simulated
        if self.sort_every is None:
            return live
        g = self.grid
        cell = np.clip(np.floor(local[live] / g.dx).astype(np.int64), 0, g.n - 1)
        return live[np.argsort((cell[:, 0] * g.n + cell[:, 1]) * g.n + cell[:, 2], kind="stable")]

    def _load(self, state: dict, order: np.ndarray) -> None:
        """Upload a state given in the caller's order, stored in `order` (current slot -> index; the
        simulated particles only)."""
        self._order = np.asarray(order)
        for key in _STATE_SHAPES:
            getattr(self.state, key).assign(np.ascontiguousarray(state[key][self._order], dtype=np.float32))
        c = self._constants
        for name in ("mu", "lam", "mass", "vol"):
            getattr(self, name).assign(c[name][self._order])
        self.core.material.assign(c["material"][self._order])
        self.core.anchor.assign(c["anchor"][self._order])
        self.splats.A0.assign(c["A0"][self._order])

    def _unsort(self, arr: np.ndarray, held: np.ndarray) -> np.ndarray:
        """The simulated particles' values in the caller's order, the frozen ones' `held` values beside them."""
        out = np.empty((self.n, *arr.shape[1:]), arr.dtype)
        out[self._order] = arr
        if len(self._frozen):
            out[self._frozen] = held
        return out

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
    def substeps_required(self) -> int:
        """Substeps per frame the stable (CFL) step asks for, before max_substeps_per_frame caps it."""
        return self._plan.n_required

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
        if self.sort_every and self.frame > 0 and self.frame % self.sort_every == 0:
            state = self.get_state()
            self._load(state, self._sorted_order(state["x"]))
        plan = self._plan
        core, st = self.core, self.state
        core.reset_bad()
        t0 = self.time
        box = core.g_full
        for k in range(plan.n):
            if k % self.box_every == 0:
                box = core.particle_box(st.x, self.box_every)
            core.substep(st, st, self.mu, self.lam, self.mass, self.vol, self.grid_mv, self.grid_v,
                         t0 + k * plan.dt, plan.dt, k, clear=True, g=box)
        bad = core.first_bad_substep()
        if bad is not None:
            self._diverged(bad, plan)
        self._speed.zero_()
        wp.launch(max_speed, self.n_simulated, inputs=[st.v, self._speed], device=self.device)
        v_max = float(self._speed.numpy()[0])
        if not math.isfinite(v_max) or v_max > 1e37:
            self._diverged(plan.n - 1, plan)
        self.frame += 1
        if self.config.substep_dt is None:
            self._plan = self._make_plan(v_max)
        positions = displaced(self._world0, self._local0, self._unsort(st.x.numpy(), self._held["x"]))
        if not outputs:
            return FrameOutput(frame=self.frame - 1, time=self.time, positions=positions)
        out = self.splats.compute(st.F, self.frame - 1, self.time, positions)
        for name in ("rotations", "scales", "cov", "polar_R", "A"):
            setattr(out, name, self._unsort(getattr(out, name), getattr(self._held_splats, name, None)))
        return out

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
        """Numpy copy of the particle state (caller's order; x is domain-local, see grid.to_world),
        the frame index and the internal particle order (so a resume is bit-identical)."""
        d = {key: self._unsort(getattr(self.state, key).numpy(), self._held[key]) for key in _STATE_SHAPES}
        d["frame"] = np.array(self.frame, dtype=np.int64)
        d["order"] = self._order.copy()
        return d

    def set_state(self, d: dict) -> None:
        """Restore a state written by get_state()."""
        for key, tail in _STATE_SHAPES.items():
            if key not in d:
                raise ValueError(f"state is missing {key!r}")
            arr = np.asarray(d[key])
            if arr.shape != (self.n, *tail) or not np.isfinite(arr).all():
                raise ValueError(f"state[{key!r}]: expected finite array of shape {(self.n, *tail)}, got {arr.shape}")
        order = np.asarray(d["order"]) if "order" in d else self._sorted_order(np.asarray(d["x"]))
        if order.shape == (self.n,) and self.n_simulated < self.n:  # every particle's: keep the simulated ones'
            order = order[np.isin(order, self._simulated)]
        if order.shape != (self.n_simulated,) or not np.array_equal(np.sort(order), self._simulated):
            raise ValueError("state['order'] is not a permutation of the simulated particles")
        self._load(d, order)
        self.frame = int(d.get("frame", self.frame))
        self.grid_mv.zero_()
        if self.config.substep_dt is None:
            self._plan = self._make_plan(float(np.linalg.norm(np.asarray(d["v"]), axis=1).max()))
