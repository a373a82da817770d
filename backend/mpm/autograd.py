"""Differentiable MPM rollouts with a checkpointed, recorded backward and a torch.autograd bridge.

Gradients flow from frame outputs (positions, covariances) to per-particle log E, nu, rho and
the initial velocity v0, including the path through the grid mass (the position dependence of
the P2G weights), which PhysDreamer's solver drops.

Memory: with checkpointing, the forward pass keeps only the particle state at segment starts
(~100 bytes per particle each) and each substep's P2G grid (node momentum and mass, 16 bytes per node
of the box around the particles, up to grid_store_mb) and, where the budget allows, the particles'
stresses; backward re-runs one segment of `checkpoint_every` substeps on fresh buffers with one small
tape per substep, starting each substep from its kept grid (so only the grid update and G2P are
recomputed, not P2G, and the P2G adjoint reads the kept stress instead of recomputing it), so the
live tape holds at most one segment of particle states and grids, and each taped grid covers only
the node box around the particles (not the whole domain). With checkpoint_every=None every substep
stays taped from the forward pass (memory grows with every substep; used to check the checkpointed
path).

Truncated BPTT: bptt_substeps=None backpropagates through the whole rollout (exact gradient);
bptt_substeps=K lets each frame's loss flow back only through the last K substeps before that
frame (K >= substeps per frame: the whole frame); dL/dv0 is then non-zero only when frame 0's
window reaches the initial state.
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
import warp as wp

from .config import SimConfig
from .core import SimCore, State, fixed_nodes, frozen_anchors, init_warp, initial_state
from .errors import SimulationDiverged
from .grid import GridMapping, SubstepPlan, displaced, plan_substeps
from . import kernels, kernels_forward
from .kernels import covariance, material_from_params, p2g
from .particles import ParticleState, rest_shape_matrices
from .solver import max_wave_speed
from . import adjoints as adjoints_module
from .threads import LaunchRecord, usable_cores


# A kept P2G grid is worth more than kept stresses (see _forward_checkpointed): stresses are kept only while the
# budget left holds the grids of the substeps to come at this factor times the current box (boxes grow as the
# object moves apart).
GRID_RESERVE = 1.5
GRID_NODE_BYTES = wp.types.type_size_in_bytes(wp.vec4)  # a kept grid node: momentum and mass
STRESS_BYTES = wp.types.type_size_in_bytes(wp.mat33)  # a kept particle stress


@dataclass
class _Params:
    """Per-run material arrays (so two forward passes never share gradients)."""

    log_E: wp.array
    nu: wp.array
    rho: wp.array
    mu: wp.array
    lam: wp.array
    mass: wp.array


@dataclass
class _Buffers:
    """Per-substep states, grids and tapes for a contiguous range of substeps."""

    states: list               # views into `blocks`, one State per substep boundary
    blocks: list               # one array per state field holding every substep's values (one memset to zero)
    grid_mv: list
    grid_v: list
    cov: list
    tapes: list = field(default_factory=list)

    def zero_grads(self) -> None:
        for a in self.blocks:
            a.grad.zero_()
        for a in self.grid_mv + self.grid_v + self.cov:
            if a is not None:
                a.grad.zero_()


@dataclass
class _Run:
    """What one forward pass leaves for its backward pass."""

    params: _Params
    plan: SubstepPlan
    n_frames: int
    checkpoints: dict          # substep index -> State (checkpoint mode)
    full: _Buffers | None      # all substeps (no-checkpoint mode)
    # substep -> (node box, P2G grid, particle stresses or None) kept by a checkpointed forward
    grids: dict = field(default_factory=dict)


class DifferentiableSim:
    """Differentiable rollout of a fixed particle set; call it with torch tensors.

    positions (N,3) m, material_id, anchor, cov0 (N,3,3) m^2 or None, volume (N,) m^3 or None:
    as in ParticleState. bptt_substeps: None (exact) or K (truncated window per frame).
    checkpoint_every: substeps per recomputed segment, or None to keep the full tape.
    The rollout runs domain-local (metres from the grid's first node, `grid.origin` in world);
    outputs are world positions, or domain-local with local_outputs=True (float32 cannot hold
    millimetres a kilometre from the world origin).

    F0: the rest state under gravity (mpm/rest.py), solved with Young's moduli F0_E (N,) Pa. Each call
    rescales its strain to the call's E, F0(E) = I + (F0 - I) F0_E / E, so the rest stress (which balances
    the same weight) stays put while the estimator changes E; dL/dlog E includes this path through the
    initial F. The splats' rest shapes use F0 as given.

    full_tape_mb: keep the full tape anyway when it needs at most this many MB (no recomputation:
    the backward then costs about a forward less); 0 = always checkpoint when checkpoint_every is set.

    adjoints: "hand" (the hand-written p2g/g2p adjoints of mpm/adjoints.py) or "generated" (warp's
    generated adjoints of every kernel: slower, the reference the hand-written ones are tested against).
    grid_store_mb: the most a checkpointed forward keeps of its P2G grids and stresses (MB) so that backward
    need not recompute P2G (estimation passes budget.GRID_STORE_MB); substeps beyond it are recomputed whole.
    0 keeps none.

    The substep is config.substep_dt, or the CFL bound for the material passed to each call
    (set substep_dt when optimising so the substep count cannot jump between iterations).

    rho: the densities (kg/m^3, (N,) or one) that pick the fixed grid nodes (core.fixed_nodes) once for every
    call: the anchors' clamp stays where the scene puts it whatever densities a call passes. None: each call
    picks them with its own densities.

    Anchored particles that can neither move nor move anything (core.frozen_anchors) are left out of the
    rollout (freeze_anchors=False keeps them, to compare): inputs and outputs still hold every particle, the
    frozen ones' outputs are their rest positions and shapes and their gradients zero (exactly what the full
    rollout gives them). With rho given, every anchored particle the fixed nodes hold whole is frozen; without,
    only those whose nodes no free particle reaches (fixed whatever the densities).
    """

    def __init__(self, positions, material_id=0, anchor=None, cov0=None, config: SimConfig | None = None,
                 device: str = "cpu", bptt_substeps: int | None = None, checkpoint_every: int | None = 16,
                 volume=None, local_outputs: bool = False, F0=None, F0_E=None, full_tape_mb: float = 0.0,
                 adjoints: str = "hand", grid_store_mb: float = 0.0, freeze_anchors: bool = True, rho=None):
        self._args = dict(positions=positions, material_id=material_id, anchor=anchor, cov0=cov0, config=config,
                          device=device, bptt_substeps=bptt_substeps, checkpoint_every=checkpoint_every,
                          volume=volume, local_outputs=local_outputs, F0=F0, F0_E=F0_E, full_tape_mb=full_tape_mb,
                          adjoints=adjoints, grid_store_mb=grid_store_mb, freeze_anchors=freeze_anchors, rho=rho)
        self.device = init_warp(device)
        self.config = config if config is not None else SimConfig()
        self.config.validate()
        ps = ParticleState(positions, material_id=material_id, anchor=anchor, cov0=cov0, volume=volume, F0=F0,
                           **({} if rho is None else {"rho": rho}))
        if ps.F0 is not None and F0_E is None:
            raise ValueError("F0 needs F0_E, the Young's moduli (Pa) it was solved with")
        if bptt_substeps is not None and int(bptt_substeps) < 1:
            raise ValueError(f"bptt_substeps must be None or >= 1, got {bptt_substeps}")
        if checkpoint_every is not None and int(checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be None or >= 1, got {checkpoint_every}")
        self.bptt_substeps = None if bptt_substeps is None else int(bptt_substeps)
        self.checkpoint_every = None if checkpoint_every is None else int(checkpoint_every)
        self.full_tape_mb = float(full_tape_mb)
        self.grid_store_mb = float(grid_store_mb)
        self.grid = GridMapping.build(self.config, ps.positions)
        local = self.grid.to_local(ps.positions)
        vol = ps.volume if ps.volume is not None else np.full(ps.n, self.grid.default_volume(ps.positions))
        self._fixed = None  # the fixed nodes of every call (rho given), else picked per call
        if rho is not None and ps.anchor.any():
            self._fixed = fixed_nodes(self.grid, self.device, (local, ps.rho * vol, ps.anchor))
        frozen = (frozen_anchors(local, ps.anchor, ps.material_id, ps.F0, self.grid, self.config, self._fixed)
                  if freeze_anchors else np.zeros(ps.n, bool))
        live = self._live = np.flatnonzero(~frozen)  # the caller's indices of the simulated particles
        self._frozen = np.flatnonzero(frozen)
        self.n_all, self.n = ps.n, len(live)  # every particle; the simulated ones (all arrays below)
        self.F0 = None if ps.F0 is None else ps.F0[live]
        self.F0_log_E = None
        if ps.F0 is not None:
            self.F0_log_E = np.log(np.broadcast_to(np.asarray(F0_E, np.float64), (ps.n,)))[live]
        self.material_id = ps.material_id[live]
        self.positions = local[live]
        self._world0 = ps.positions[live]
        self.local_outputs = bool(local_outputs)
        a0 = rest_shape_matrices(ps.cov0, vol, ps.F0)
        cov0 = a0 @ np.transpose(a0, (0, 2, 1))
        # What the outputs show for the frozen particles (F stays I): rest positions and shapes.
        self._frozen_vol, self._frozen_cov = vol[frozen], cov0[frozen]
        held = local[frozen].astype(np.float32)  # as a simulated anchored particle holds its place
        self._frozen_pos = held if self.local_outputs else self._shown(ps.positions[frozen], local[frozen], held)
        vol = vol[live]
        if self._fixed is None:  # each call picks the fixed nodes, the frozen particles' mass counted
            self.core = SimCore(self.config, self.grid, self.material_id, ps.anchor[live], self.device,
                                frozen_x=local[frozen])
        else:
            self.core = SimCore(self.config, self.grid, self.material_id, ps.anchor[live], self.device)
            self.core.use_fixed_nodes(self._fixed)
        self.n_threads = self.core.use_threads(self.config.threads)
        if adjoints not in ("hand", "generated"):
            raise ValueError(f"adjoints must be 'hand' or 'generated', got {adjoints!r}")
        self.core.use_hand_adjoints(adjoints == "hand")
        self.vol = wp.array(vol.astype(np.float32), dtype=float, device=self.device)
        self.cov0 = wp.array(cov0[live], dtype=wp.mat33, device=self.device)
        self._segment: list = [None, None]  # recomputed segments' buffers: one backpropagated, one recomputed
        self._spare: _Buffers | None = None  # a finished run's full tape, reused by the next (see _tape_buffers)

    # -- public ------------------------------------------------------------------------------
    def __call__(self, log_E: torch.Tensor, nu: torch.Tensor, rho: torch.Tensor, v0: torch.Tensor,
                 n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Simulate n_frames frames. Returns positions (T,N,3) and covariances (T,N,3,3); frame 0 is
        the state after the first frame time 1/fps (the initial state is not included).
        log_E, nu, rho: (N,) or scalars (broadcast); v0: (N,3) or (3,) m/s."""
        n = self.n_all
        log_E, nu, rho = (t.expand(n) if t.dim() == 0 else t for t in (log_E, nu, rho))
        if v0.dim() == 1:
            v0 = v0.expand(n, 3)
        # Without a backward to come (torch.no_grad, or no input needs a gradient) nothing is taped.
        taped = torch.is_grad_enabled() and any(t.requires_grad for t in (log_E, nu, rho, v0))
        return _MPMFunction.apply(log_E, nu, rho, v0, self, int(n_frames), taped)

    def twin(self) -> "DifferentiableSim":
        """Another simulator of the same particles and settings, with buffers of its own: two threads may
        each run one (forward only; warp releases the GIL in its kernels). The kernel modules are loaded
        here, so the two never compile or load one at the same time."""
        for module in (kernels, kernels_forward):
            wp.load_module(module, device=self.device)
        return DifferentiableSim(**self._args)

    # -- forward -----------------------------------------------------------------------------
    def _params(self, log_E: np.ndarray, nu: np.ndarray, rho: np.ndarray) -> _Params:
        dev = self.device

        def arr(a):
            return wp.array(np.ascontiguousarray(a, dtype=np.float32), dtype=float, device=dev, requires_grad=True)

        def zeros():
            return wp.zeros(self.n, dtype=float, device=dev, requires_grad=True)

        p = _Params(arr(log_E), arr(nu), arr(rho), zeros(), zeros(), zeros())
        wp.launch(material_from_params, self.n, inputs=[p.log_E, p.nu, p.rho, self.vol],
                  outputs=[p.mu, p.lam, p.mass], device=dev)
        return p

    def _check_inputs(self, log_E, nu, rho, v0) -> None:
        n = self.n_all
        for name, a, shape in (("log_E", log_E, (n,)), ("nu", nu, (n,)), ("rho", rho, (n,)), ("v0", v0, (n, 3))):
            if a.shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {a.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"{name}: contains NaN or inf")
        if not ((nu > -1.0).all() and (nu < 0.5).all()):
            raise ValueError("nu (Poisson ratio) must lie strictly between -1 and 0.5")
        if not (rho > 0).all():
            raise ValueError("rho (density) must be > 0")
        if np.abs(log_E).max() > 80:
            raise ValueError("log_E out of range (|log E| > 80)")

    def forward_numpy(self, log_E, nu, rho, v0, n_frames: int, taped: bool = True):
        """Forward rollout; returns (positions (T,N,3), cov (T,N,3,3), run) with numpy outputs.
        taped=False: no backward will follow, so the whole tape is never kept."""
        log_E, nu, rho = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (log_E, nu, rho))
        v0 = np.asarray(v0, dtype=np.float32).reshape(self.n_all, 3)
        self._check_inputs(log_E, nu, rho, v0)
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        frozen_mass = rho[self._frozen] * self._frozen_vol if self._fixed is None else None
        log_E, nu, rho, v0 = (a[self._live] for a in (log_E, nu, rho, v0))
        pos, cov, run = self._rollout(log_E, nu, rho, v0, n_frames, taped, frozen_mass)
        return self._every_particle(pos, self._frozen_pos), self._every_particle(cov, self._frozen_cov), run

    def _every_particle(self, values: np.ndarray, frozen: np.ndarray) -> np.ndarray:
        """(T, n, ...) values of the simulated particles -> (T, N, ...), the frozen ones' constant."""
        if not len(self._frozen):
            return values
        out = np.empty((values.shape[0], self.n_all, *values.shape[2:]), values.dtype)
        out[:, self._live] = values
        out[:, self._frozen] = frozen
        return out

    def _on_simulated(self, values: np.ndarray | None) -> np.ndarray | None:
        """(T, N, ...) -> (T, n, ...): what the simulated particles get of an output gradient."""
        return values if values is None or not len(self._frozen) else values[:, self._live]

    def _rollout(self, log_E, nu, rho, v0, n_frames: int, taped: bool, frozen_mass: np.ndarray | None):
        """forward_numpy on the simulated particles' inputs and outputs."""
        params = self._params(log_E, nu, rho)
        c_max = max_wave_speed(np.exp(log_E), nu, rho, self.material_id)
        plan = plan_substeps(self.config, self.grid.dx, c_max, float(np.linalg.norm(v0, axis=1).max()))
        init = State.from_numpy(initial_state(self.positions, v0, self.material_id, self._rest_F(log_E)), self.device)
        if self._fixed is None:
            self.core.set_fixed_nodes(init.x, params.mass, frozen_mass)
        full = self.checkpoint_every is None or self._tape_mb(plan.n * n_frames, n_frames, init) <= self.full_tape_mb
        if taped and full:
            pos, cov, full = self._forward_taped(params, plan, init, n_frames)
            return pos, cov, _Run(params, plan, n_frames, {}, full)
        pos, cov, ckpts, grids = self._forward_checkpointed(params, plan, init, n_frames, taped)
        return pos, cov, _Run(params, plan, n_frames, ckpts, None, grids)

    def _rest_F(self, log_E: np.ndarray) -> np.ndarray | None:
        """F0 with its strain rescaled to these moduli (see the class docstring)."""
        if self.F0 is None:
            return None
        scale = np.exp(self.F0_log_E - np.asarray(log_E, np.float64))[:, None, None]
        return (np.eye(3) + (self.F0 - np.eye(3)) * scale).astype(np.float32)

    def _tape_mb(self, n_substeps: int, n_frames: int, init: State) -> float:
        """Memory of the whole tape (MB): states and grids with their gradients, covariances at frame ends."""
        nodes = self.core.box_nodes(self.core.particle_box(init.x, 1))
        per_substep = self.n * 2 * (3 + 3 + 9 + 9 + 1 + 3 + 9) * 4 + nodes * 2 * (4 + 3) * 4
        return (n_substeps * per_substep + n_frames * self.n * 2 * 9 * 4) / 2**20

    def _windows(self, n_frames: int, n_sub: int) -> list[tuple[int, int, list[int]]]:
        """(start, end, frames seeded) of each backward window, in substeps."""
        total = n_frames * n_sub
        if self.bptt_substeps is None:
            return [(0, total, list(range(n_frames)))]
        return [(max(0, (f + 1) * n_sub - self.bptt_substeps), (f + 1) * n_sub, [f]) for f in range(n_frames)]

    def _segments(self, start: int, end: int) -> list[tuple[int, int]]:
        step = self.checkpoint_every or (end - start)
        return [(a, min(a + step, end)) for a in range(start, end, step)]

    def _frame_check(self, frame: int, plan: SubstepPlan) -> None:
        bad = self.core.first_bad_substep()
        if bad is not None:
            raise SimulationDiverged(frame, bad, f"Substep dt = {plan.dt:.3g} s ({plan.n} per frame).")

    def _forward_checkpointed(self, params: _Params, plan: SubstepPlan, init: State, n_frames: int, taped: bool):
        """Forward keeping the checkpoints and, when a backward follows (taped), the P2G grids of the first
        substeps, each on its own node box (the one the recomputation uses), until grid_store_mb is spent.

        A substep also keeps its particles' stresses (36 bytes each: the P2G adjoint need not recompute
        them) while what is left of the budget still holds the grids of all the substeps to come (GRID_RESERVE):
        a kept grid saves a whole P2G, kept stresses only the stress (a fifth of the P2G adjoint), and the
        grid usually takes less memory (a 10k block: 79 KB against 383 KB a substep)."""
        dev, n_sub = self.device, plan.n
        grids: dict[int, tuple] = {}
        store_left = self.grid_store_mb * 2**20 if taped else 0.0
        total = n_frames * n_sub
        # (no backward follows an untaped forward, such as a ladder rung: nothing to restart from)
        needed = {a for s, e, _ in self._windows(n_frames, n_sub) for a, _ in self._segments(s, e)} if taped else ()
        grid_mv = wp.zeros(self.core.n_nodes, dtype=wp.vec4, device=dev)
        grid_v = wp.zeros(self.core.n_nodes, dtype=wp.vec3, device=dev)
        cov = wp.zeros(self.n, dtype=wp.mat33, device=dev)
        st = init
        ckpts: dict[int, State] = {}
        pos_out, cov_out = [], []
        self.core.reset_bad()
        box, window, box_until = self.core.g_full, 4, 0
        for s in range(total):
            if s in needed:
                ckpts[s] = State.zeros(self.n, dev)
                ckpts[s].assign(st)
            mv, stress = grid_mv, None
            if store_left > 0:
                box, box_until = self.core.particle_box(st.x, 1), s + 1
                nodes = self.core.box_nodes(box)
                grid_bytes = GRID_NODE_BYTES * nodes
                if grid_bytes <= store_left:
                    store_left -= grid_bytes
                    mv = wp.zeros(nodes, dtype=wp.vec4, device=dev)
                    reserve = GRID_RESERVE * grid_bytes * (total - s - 1)  # the grids to come, at this box's size
                    if self.core.hand_adjoints and store_left - STRESS_BYTES * self.n >= reserve:
                        store_left -= STRESS_BYTES * self.n
                        stress = wp.empty(self.n, dtype=wp.mat33, device=dev)
                    grids[s] = (box, mv, stress)
                else:
                    store_left = 0.0  # spent: the later substeps are recomputed whole
            elif s >= box_until:
                box, box_until = self.core.particle_box(st.x, window), s + window
            self.core.substep(st, st, params.mu, params.lam, params.mass, self.vol, mv, grid_v,
                              s * plan.dt, plan.dt, s % n_sub, clear=True, g=box, clear_grid=mv is grid_mv,
                              stress=stress)
            if (s + 1) % n_sub == 0:
                self._frame_check(s // n_sub, plan)
                self.core.reset_bad()
                wp.launch(covariance, self.n, inputs=[st.F, self.cov0], outputs=[cov], device=dev)
                pos_out.append(st.x.numpy().copy())
                cov_out.append(cov.numpy().copy())
        return self._output_positions(np.stack(pos_out)), np.stack(cov_out), ckpts, grids

    def _output_positions(self, local: np.ndarray) -> np.ndarray:
        """float32 outputs: world (the default) or domain-local positions (same gradient)."""
        if self.local_outputs:
            return local
        return self._shown(self._world0, self.positions, local)

    @staticmethod
    def _shown(world0: np.ndarray, local0: np.ndarray, local: np.ndarray) -> np.ndarray:
        return displaced(world0, local0.astype(np.float64), local).astype(np.float32)

    def _alloc(self, n_substeps: int) -> _Buffers:
        """States for n_substeps + 1 boundaries as views of one array per field: ~1,000 small
        allocations per rollout cost more than the kernels of a few thousand particles."""
        n, count = self.n, n_substeps + 1
        whole = State.zeros(n * count, self.device, requires_grad=True)
        states = [State(*(a[k * n:(k + 1) * n] for a in whole.arrays())) for k in range(count)]
        return _Buffers(states=states, blocks=list(whole.arrays()), grid_mv=[], grid_v=[],
                        cov=[None] * n_substeps)  # covariances: allocated at the frame ends (see _record)

    def _record(self, buf: _Buffers, params: _Params, plan: SubstepPlan, a: int, b: int,
                check_frames: bool = False, grids: dict | None = None) -> None:
        """Run substeps a..b-1 from buf.states[0], one tape per substep (covariance taped at frame ends).

        Each substep gets fresh grid arrays covering only the node box around its particles. A substep
        whose P2G grid the forward kept (grids) starts from it: P2G is taped for its adjoint, not run (with
        the stresses the forward kept, if any, for the adjoint to read)."""
        buf.tapes, buf.grid_mv, buf.grid_v = [], [], []
        n_sub, dev = plan.n, self.device
        for k in range(b - a):
            s = a + k
            kept = grids.get(s) if grids else None
            stress = None
            if kept is None:
                box = self.core.particle_box(buf.states[k].x, 1)
                buf.grid_mv.append(wp.zeros(self.core.box_nodes(box), dtype=wp.vec4, device=dev, requires_grad=True))
            else:
                box, stress = kept[0], kept[2]
                buf.grid_mv.append(wp.clone(kept[1], requires_grad=True))
            buf.grid_v.append(wp.zeros(self.core.box_nodes(box), dtype=wp.vec3, device=dev, requires_grad=True))
            record = LaunchRecord(self.core.launch, given=() if kept is None else (p2g,))
            self.core.substep(buf.states[k], buf.states[k + 1], params.mu, params.lam, params.mass, self.vol,
                              buf.grid_mv[k], buf.grid_v[k], s * plan.dt, plan.dt, s % n_sub, clear=False, g=box,
                              launch=record, stress=stress)
            if (s + 1) % n_sub == 0:
                if buf.cov[k] is None:
                    buf.cov[k] = wp.zeros(self.n, dtype=wp.mat33, device=dev, requires_grad=True)
                record(covariance, self.n, inputs=[buf.states[k + 1].F, self.cov0], outputs=[buf.cov[k]],
                       device=self.device)
            buf.tapes.append(record)
            if check_frames and (s + 1) % n_sub == 0:
                self._frame_check(s // n_sub, plan)
                self.core.reset_bad()

    def _forward_taped(self, params: _Params, plan: SubstepPlan, init: State, n_frames: int):
        total = n_frames * plan.n
        buf = self._tape_buffers(total)
        buf.states[0].assign(init)
        self.core.reset_bad()
        self._record(buf, params, plan, 0, total, check_frames=True)
        ends = [(f + 1) * plan.n for f in range(n_frames)]
        pos = self._output_positions(np.stack([buf.states[e].x.numpy() for e in ends]))
        cov = np.stack([buf.cov[e - 1].numpy() for e in ends])
        return pos, cov, buf

    def _tape_buffers(self, n_substeps: int) -> _Buffers:
        """Buffers for a full tape: the spare of the last finished run when it is big enough (and at
        most twice the size), else new ones. A new tape of tens of MB costs more than its substeps'
        kernels to allocate (the pages are touched twice: allocation and zeroing); a reused one needs
        no zeroing: every substep writes all of its output state, and backward zeroes the gradients."""
        spare, self._spare = self._spare, None
        if spare is None or not n_substeps <= len(spare.cov) <= 2 * n_substeps:
            return self._alloc(n_substeps)
        return _Buffers(states=spare.states[: n_substeps + 1], blocks=spare.blocks, grid_mv=[], grid_v=[],
                        cov=spare.cov[:n_substeps])

    def release(self, run: _Run) -> None:
        """The run's backward is done: its full tape may be reused by the next forward pass."""
        if run is not None and run.full is not None:
            run.full.tapes, run.full.grid_mv, run.full.grid_v = [], [], []
            self._spare = run.full

    # -- backward ----------------------------------------------------------------------------
    def backward_numpy(self, run: _Run, grad_pos: np.ndarray | None, grad_cov: np.ndarray | None):
        """Gradients (dL/dlog_E, dL/dnu, dL/drho, dL/dv0) for output gradients (T,N,3), (T,N,3,3)."""
        grads = self._backward(run, self._on_simulated(grad_pos), self._on_simulated(grad_cov))
        if not len(self._frozen):
            return grads
        out = [np.zeros((self.n_all, *g.shape[1:]), g.dtype) for g in grads]
        for full, g in zip(out, grads):
            full[self._live] = g
        return tuple(out)

    def _backward(self, run: _Run, grad_pos: np.ndarray | None, grad_cov: np.ndarray | None):
        """backward_numpy on the simulated particles' gradients."""
        n_sub, dev = run.plan.n, self.device
        p = run.params
        for a in (p.mu, p.lam, p.mass):
            a.grad.zero_()
        grad_v0 = np.zeros((self.n, 3), np.float32)
        grad_F0 = np.zeros((self.n, 3, 3), np.float32)
        for start, end, frames in self._windows(run.n_frames, n_sub):
            if run.full is not None:
                run.full.zero_grads()  # the whole tape once per window (segments only carry state adjoints)
            carry = None
            for (a, b), buf, off in self._recomputed(run, list(reversed(self._segments(start, end)))):
                seeds = [(f, (f + 1) * n_sub - a) for f in frames if a < (f + 1) * n_sub <= b]
                carry = self._backprop(buf, off, b - a, seeds, carry, grad_pos, grad_cov)
            if start == 0:
                grad_v0 += carry[1]
                grad_F0 += carry[3]
        tape = wp.Tape()
        for a in (p.log_E, p.nu, p.rho):
            a.grad.zero_()
        with tape:
            wp.launch(material_from_params, self.n, inputs=[p.log_E, p.nu, p.rho, self.vol],
                      outputs=[p.mu, p.lam, p.mass], device=dev)
        tape.backward()
        grad_log_E = p.log_E.grad.numpy().copy()
        if self.F0 is not None:  # d F0(E) / d log E = -(F0(E) - I)
            strain = self._rest_F(p.log_E.numpy()) - np.eye(3, dtype=np.float32)
            grad_log_E -= (grad_F0 * strain).sum(axis=(1, 2))
        return grad_log_E, p.nu.grad.numpy().copy(), p.rho.grad.numpy().copy(), grad_v0

    def _recomputed(self, run: _Run, segments: list):
        """(segment, taped buffers covering it, offset of its first substep in them) for each segment in turn.

        A checkpointed run recomputes each segment before its backward (about a quarter of the backward's work
        on the demo's plant). When the automatic thread count (config.threads None) gave the substeps one
        thread and another core is free, the next segment is recomputed there while the caller backpropagates
        this one, each in buffers of its own; the gradients are the same to the bit."""
        if run.full is not None:
            yield from (((a, b), run.full, a) for a, b in segments)
            return
        if not self._pipelined():
            yield from (((a, b), self._segment_buffers(run, a, b, 0), 0) for a, b in segments)
            return
        for module in (kernels, adjoints_module):  # loaded here: two threads never load one at the same time
            wp.load_module(module, device=self.device)
        with ThreadPoolExecutor(1, thread_name_prefix="recompute") as pool:
            ahead = pool.submit(self._segment_buffers, run, *segments[0], 0)
            for i, segment in enumerate(segments):
                buf = ahead.result()
                if i + 1 < len(segments):
                    ahead = pool.submit(self._segment_buffers, run, *segments[i + 1], (i + 1) % 2)
                yield segment, buf, 0

    def _pipelined(self) -> bool:
        return self.device == "cpu" and self.config.threads is None and self.n_threads == 1 and usable_cores() > 1

    def _segment_buffers(self, run: _Run, a: int, b: int, slot: int) -> _Buffers:
        """Substeps a..b recomputed from their checkpoint into the taped buffers `slot` (0 or 1)."""
        length = b - a
        if self._segment[slot] is None or len(self._segment[slot].cov) < length:
            self._segment[slot] = self._alloc(length)
        buf = self._segment[slot]
        buf.zero_grads()
        buf.states[0].assign(run.checkpoints[a])
        self._record(buf, run.params, run.plan, a, b, grids=run.grids)
        return buf

    def _backprop(self, buf: _Buffers, off: int, length: int, seeds, carry, grad_pos, grad_cov):
        """Seed output/carried adjoints, run the substep tapes backwards; returns the state adjoint
        at the segment start as numpy (x, v, C, F, plastic, x_err, F_err)."""
        end_state = buf.states[off + length]
        if carry is not None:
            for arr, g in zip(end_state.arrays(), carry):
                arr.grad.assign(wp.array(g, dtype=arr.dtype, device=self.device))
        for f, k in seeds:
            st = buf.states[off + k]
            if grad_pos is not None:
                st.x.grad.assign(st.x.grad.numpy() + grad_pos[f])
            if grad_cov is not None:
                cov = buf.cov[off + k - 1]
                cov.grad.assign(wp.array(np.ascontiguousarray(grad_cov[f], dtype=np.float32), dtype=wp.mat33,
                                         device=self.device))
        for k in reversed(range(off, off + length)):
            buf.tapes[k].backward(self.core.adjoint)
        return tuple(a.grad.numpy().copy() for a in buf.states[off].arrays())


# Test hook (tests only, never set by the product): SPLAT_TEST_NONFINITE_GRAD="2,3" makes the 2nd and
# 3rd backward pass of this process return NaN for dL/dlog_E, "2-" every backward pass from the 2nd on;
# it reproduces the MPM adjoint's rare NaN so the estimator's recovery from it can be tested end to end.
NONFINITE_GRAD_HOOK = "SPLAT_TEST_NONFINITE_GRAD"
_backward_calls = itertools.count(1)


def _injected_nonfinite(call: int) -> bool:
    spec = os.environ.get(NONFINITE_GRAD_HOOK, "").strip()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if part.endswith("-") and call >= int(part[:-1]) or part == str(call):
            return True
    return False


class _MPMFunction(torch.autograd.Function):
    """torch bridge: forward runs the warp rollout, backward the checkpointed adjoint."""

    @staticmethod
    def forward(ctx, log_E, nu, rho, v0, sim: DifferentiableSim, n_frames: int, taped: bool):
        def np32(t):
            return t.detach().to("cpu", torch.float32).numpy()

        pos, cov, run = sim.forward_numpy(np32(log_E), np32(nu), np32(rho), np32(v0), n_frames, taped)
        ctx.sim, ctx.run = sim, run
        ctx.meta = [(t.dtype, t.device) for t in (log_E, nu, rho, v0)]
        dev = log_E.device
        return torch.from_numpy(pos).to(dev), torch.from_numpy(cov).to(dev)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_pos, grad_cov):
        def np32(t):
            return None if t is None else t.detach().to("cpu", torch.float32).numpy()

        grads = ctx.sim.backward_numpy(ctx.run, np32(grad_pos), np32(grad_cov))
        ctx.sim.release(ctx.run)
        ctx.run = None
        if _injected_nonfinite(next(_backward_calls)):
            grads = (np.full_like(grads[0], np.nan), *grads[1:])
        out = [torch.from_numpy(np.asarray(g)).to(device=d, dtype=dt) for g, (dt, d) in zip(grads, ctx.meta)]
        return out[0], out[1], out[2], out[3], None, None, None
