"""Device-side simulation pieces shared by the forward solver and the differentiable simulator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import warp as wp

from .adjoints import HandAdjoints, Launch
from .boundary import body_acceleration, build_boundaries, build_pokes
from .config import MaterialModel, SimConfig
from .constitutive import PlasticParams
from .grid import GridMapping
from . import kernels as taped
from . import kernels_forward as untaped
from .kernels import GridInfo
from .kernels_forward import anchor_node_mass, cell_bounds
from .replay import Replayer
from .threads import SlabLauncher, plain_adjoint, thread_count

NO_BAD_SUBSTEP = 2**31 - 1
_initialised = False


def init_warp(device: str) -> str:
    """Initialise warp once and check the device exists; returns the device name."""
    global _initialised
    if not _initialised:
        # Warp logs module loads to stdout at INFO; the backend's stdout carries JSON progress.
        warning = getattr(wp, "LOG_WARNING", 30)
        if getattr(wp.config, "log_level", warning) < warning:
            wp.config.log_level = warning
        wp.init()
        _initialised = True
    name = str(device)
    if name.startswith("cuda") and not wp.is_cuda_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is available; use device='cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:i]', got {name!r}")
    return name


@dataclass
class State:
    """Particle state on the device: x (m, domain-local), v (m/s), C (1/s), F, plastic scalar, and
    x_err (m) / F_err: the part of the last x / F updates that float32 could not hold (compensated
    summation, so slow creep is neither rounded away nor biased, wherever the object sits)."""

    x: wp.array
    v: wp.array
    C: wp.array
    F: wp.array
    plastic: wp.array
    x_err: wp.array
    F_err: wp.array

    @classmethod
    def zeros(cls, n: int, device: str, requires_grad: bool = False) -> "State":
        def z(dtype):
            return wp.zeros(n, dtype=dtype, device=device, requires_grad=requires_grad)
        return cls(z(wp.vec3), z(wp.vec3), z(wp.mat33), z(wp.mat33), z(float), z(wp.vec3), z(wp.mat33))

    @classmethod
    def from_numpy(cls, d: dict, device: str, requires_grad: bool = False) -> "State":
        def a(key, dtype):
            return wp.array(np.ascontiguousarray(d[key], dtype=np.float32), dtype=dtype, device=device,
                            requires_grad=requires_grad)
        return cls(a("x", wp.vec3), a("v", wp.vec3), a("C", wp.mat33), a("F", wp.mat33), a("plastic", float),
                   a("x_err", wp.vec3), a("F_err", wp.mat33))

    def arrays(self) -> tuple:
        return (self.x, self.v, self.C, self.F, self.plastic, self.x_err, self.F_err)

    def assign(self, other: "State") -> None:
        for dst, src in zip(self.arrays(), other.arrays()):
            wp.copy(dst, src)

    def numpy(self) -> dict:
        return {k: getattr(self, k).numpy().copy() for k in ("x", "v", "C", "F", "plastic", "x_err", "F_err")}

    def zero_grad(self) -> None:
        for a in self.arrays():
            if a.grad is not None:
                a.grad.zero_()


def initial_state(positions: np.ndarray, velocity: np.ndarray, material_id: np.ndarray,
                  F0: np.ndarray | None = None) -> dict:
    """Initial state: F = F0 (default I: stress-free), C = 0, plastic = 0 (Jp = 1 for snow)."""
    n = positions.shape[0]
    plastic = np.where(material_id == int(MaterialModel.SNOW), 1.0, 0.0).astype(np.float32)
    return {
        "x": positions.astype(np.float32),
        "v": velocity.astype(np.float32),
        "C": np.zeros((n, 3, 3), np.float32),
        "F": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)) if F0 is None else np.asarray(F0, np.float32),
        "plastic": plastic,
        "x_err": np.zeros((n, 3), np.float32),
        "F_err": np.zeros((n, 3, 3), np.float32),
    }


def build_grid_info(grid: GridMapping, lo=(0, 0, 0), dims=None) -> GridInfo:
    """The kernels' GridInfo of the node box lo .. lo + dims - 1 (default: the whole grid)."""
    dims = (grid.n,) * 3 if dims is None else dims
    g = GridInfo()
    g.origin = wp.vec3(0.0, 0.0, 0.0)  # the kernels work domain-local: node 0 is the origin
    g.dx = float(grid.dx)
    g.inv_dx = float(1.0 / grid.dx)
    g.n = int(grid.n)
    g.x_lo = wp.vec3(*[float(grid.dx)] * 3)
    g.x_hi = wp.vec3(*[float((grid.n - 2) * grid.dx)] * 3)
    g.box_lo = wp.vec3i(*map(int, lo))
    g.box_dims = wp.vec3i(*map(int, dims))
    return g


# A node on the anchor's face holds half anchored mass; float sums land on either side of 1/2, so the
# clamp would flip between that node layer and the one behind it (a hinge one cell long).
FIXED_NODE_FRACTION = 0.5 - 1e-3


def fixed_nodes(grid: GridMapping, device: str, *particles: tuple) -> np.ndarray:
    """Flat mask of the grid nodes where anchored particles hold at least half of the mass (fixed: v = 0, so
    the clamp is at the anchor's face). particles: (x domain-local, mass, anchor) per set of particles,
    device arrays or numpy."""
    n_nodes = grid.n ** 3
    total = wp.zeros(n_nodes, dtype=float, device=device)
    anchored = wp.zeros(n_nodes, dtype=float, device=device)
    g = build_grid_info(grid)

    def on_device(a, dtype, np_type):
        return a if isinstance(a, wp.array) else wp.array(np.ascontiguousarray(a, np_type), dtype=dtype, device=device)

    for x, mass, anchor in particles:
        inputs = [on_device(x, wp.vec3, np.float32), on_device(mass, float, np.float32),
                  on_device(anchor, wp.int32, np.int32), g, total, anchored]
        wp.launch(anchor_node_mass, inputs[0].shape[0], inputs=inputs, device=device)
    total, anchored = total.numpy(), anchored.numpy()
    return (anchored >= FIXED_NODE_FRACTION * total) & (total > 0)


# Stencil bases within this many cells of a rounding edge count both ways (the kernels round in float32).
_BASE_SLACK = 1e-3


def frozen_anchors(local: np.ndarray, anchor: np.ndarray, material_id: np.ndarray, F0: np.ndarray | None,
                   grid: GridMapping, config: SimConfig, fixed: np.ndarray | None = None) -> np.ndarray:
    """(N,) mask of the anchored particles that can neither move nor move anything: the substeps leave them
    out (an anchored pot, a ground, a table: often most of a capture's anchored points).

    An anchored particle whose whole stencil is fixed nodes (fixed_nodes) gathers zero velocity and zero C:
    it stays put with F unchanged (an elastic model starting at F = I: a return mapping or a rest strain
    could still change what it shows), and what it scatters lands on fixed nodes only, whose velocity is
    zeroed. Every other node sums the same terms in the same order without it, so the other particles move
    bit for bit as before, provided the fixed nodes stay the same (SimCore counts its mass there).
    A node that only anchored stencils reach is fixed whatever the masses; `fixed` (the flat fixed-node mask
    for the particles' masses) adds the nodes the anchors hold at least half of: pass it only when the
    masses cannot change (a bake, not a rollout whose densities are inputs).
    Colliders can give a fixed node a velocity: with any, nothing is frozen. local: domain-local positions."""
    n = len(local)
    if config.colliders or not anchor.any():
        return np.zeros(n, bool)
    g = grid.n
    xg = np.asarray(local, np.float64) / grid.dx - 0.5
    lo = np.clip(np.floor(xg - _BASE_SLACK), 0, g - 3).astype(np.int64)
    hi = np.clip(np.floor(xg + _BASE_SLACK), 0, g - 3).astype(np.int64)  # lo or lo + 1 per axis
    inside = ((local > grid.dx) & (local < (g - 2) * grid.dx)).all(axis=1)  # never clamped into the grid

    def stencil_nodes(rows: np.ndarray):
        """(offset mask, flat node index) of every node a stencil of these particles may reach."""
        for i in range(4):
            for j in range(4):
                for k in range(4):
                    off = np.array([i, j, k])
                    reach = (off <= hi[rows] - lo[rows] + 2).all(axis=1)
                    node = lo[rows] + off
                    yield reach, (node[:, 0] * g + node[:, 1]) * g + node[:, 2]

    free = np.flatnonzero(~anchor)
    touched = np.zeros(g ** 3, bool)  # nodes a free particle's stencil reaches
    for reach, node in stencil_nodes(free):
        touched[node[reach]] = True
    candidates = np.flatnonzero(anchor & inside & (material_id <= int(MaterialModel.STVK_HENCKY)))
    if F0 is not None:
        eye = np.eye(3, dtype=np.float32)
        candidates = candidates[(np.asarray(F0)[candidates] == eye).all(axis=(1, 2))]
    held = ~touched if fixed is None else ~touched | fixed  # nodes whose velocity is zero whatever happens
    clear = np.ones(len(candidates), bool)
    for reach, node in stencil_nodes(candidates):
        clear &= ~reach | held[node]
    frozen = np.zeros(n, bool)
    frozen[candidates[clear]] = True
    if frozen.all():  # nothing would be left to simulate; keep the solvers' arrays non-empty
        frozen[:] = False
    return frozen


class SimCore:
    """Grid, boundaries, forces and per-particle constants; launches one substep.

    frozen_x: domain-local positions of the particles frozen_anchors() left out of the substeps; the fixed
    nodes are picked with their mass too (set_fixed_nodes)."""

    def __init__(self, config: SimConfig, grid: GridMapping, material_id: np.ndarray,
                 anchor: np.ndarray, device: str, frozen_x: np.ndarray | None = None):
        self.config = config
        self.grid = grid
        self.device = device
        self.n_particles = int(material_id.shape[0])
        self.n_nodes = grid.n ** 3
        self._boxes: dict = {}  # (lo, dims) -> GridInfo, see grid_info
        self.g_full = self.grid_info((0, 0, 0), (grid.n, grid.n, grid.n))
        self._bounds = wp.zeros(6, dtype=wp.int32, device=device)
        self._gravity = tuple(float(a) for a in config.gravity)
        # Walls, ground, colliders and pokes enter in world units and are shifted to domain-local here.
        self.bnd = build_boundaries(config, grid.domain_min, grid.domain_max, device, grid.origin)
        self.pokes = build_pokes(config, device, grid.origin)
        pl = config.plasticity
        pp = PlasticParams()
        pp.yield_stress, pp.hardening, pp.softening = pl.yield_stress, pl.hardening, pl.softening
        pp.viscosity, pp.dp_alpha, pp.cohesion = pl.viscosity, pl.dp_alpha, pl.cohesion
        pp.snow_theta_c, pp.snow_theta_s, pp.snow_xi = pl.snow_theta_c, pl.snow_theta_s, pl.snow_hardening
        self.pp = pp
        self.material = wp.array(material_id.astype(np.int32), dtype=wp.int32, device=device)
        self.anchor_np = anchor.astype(bool)
        self.anchor = wp.array(self.anchor_np.astype(np.int32), dtype=wp.int32, device=device)
        self.frozen_x = None
        if frozen_x is not None and len(frozen_x):
            self.frozen_x = wp.array(np.asarray(frozen_x, np.float32), dtype=wp.vec3, device=device)
            self._frozen_anchor = wp.ones(len(frozen_x), dtype=wp.int32, device=device)
        self.has_fixed = int(self.anchor_np.any() or self.frozen_x is not None)
        self.fixed = wp.zeros(self.n_nodes if self.has_fixed else 1, dtype=wp.int32, device=device)
        self.bad = wp.array([NO_BAD_SUBSTEP], dtype=wp.int32, device=device)
        self.has_plastic = bool((material_id > int(MaterialModel.STVK_HENCKY)).any())
        self.hand_adjoints = True
        self.n_threads, self.replay = 0, None
        self.use_threads(1)  # forward-path launcher (self.launch) and reverse launcher (self.adjoint)

    def use_threads(self, setting: int | None, replay: bool = True) -> int:
        """Run the forward (clear=True) substeps, and recorded substeps and their reverse passes,
        on several CPU threads; returns the count used. replay: forward launches on the CPU go
        through replay.Replayer (same kernels and results, less Python per launch); False uses
        plain wp.launch (to measure the difference).
        The particles should be cell-sorted for speed (not for correctness)."""
        n = thread_count(setting, self.n_particles, self.device)
        replay = bool(replay) and self.device == "cpu"
        if (n, replay) != (self.n_threads, self.replay):
            if n > 1:
                self.launch = SlabLauncher(self.n_particles, n, self.device, replay=replay)
            else:
                self.launch = Replayer(self.device) if replay else wp.launch
            self.n_threads, self.replay = n, replay
            self._build_adjoint()
        return n

    def use_hand_adjoints(self, on: bool) -> None:
        """Reverse passes with the hand-written p2g/g2p adjoints (mpm/adjoints.py; the default) or with
        warp's generated adjoints of every kernel (the reference they are tested against)."""
        self.hand_adjoints = bool(on)
        self._build_adjoint()

    def _build_adjoint(self) -> None:
        """self.adjoint: the reverse launch of a recorded substep kernel (threads.LaunchRecord)."""
        threaded = self.n_threads > 1
        if not self.hand_adjoints:
            self.adjoint = self.launch.adjoint if threaded else plain_adjoint
            return
        launcher = self.launch if threaded else Launch(self.device)
        self.adjoint = HandAdjoints(launcher, self.n_particles, self.has_plastic, self.device)

    def grid_info(self, lo, dims) -> GridInfo:
        """The GridInfo of the node box lo .. lo + dims - 1, built once per box: a struct costs more
        to build than a substep's launch, and boxes repeat from substep to substep. Tapes keep
        references to the structs they were launched with, so a built struct is never changed."""
        key = (*map(int, lo), *map(int, dims))
        g = self._boxes.get(key)
        if g is None:
            if len(self._boxes) > 4096:  # boxes of long-gone substeps
                self._boxes.clear()
            g = self._boxes[key] = build_grid_info(self.grid, lo, dims)
        return g

    @staticmethod
    def box_nodes(g: GridInfo) -> int:
        return int(g.box_dims[0]) * int(g.box_dims[1]) * int(g.box_dims[2])

    def particle_box(self, x: wp.array, window: int) -> GridInfo:
        """Node box holding every particle stencil for the next `window` substeps.

        A stencil spans cells c - 1 .. c + 2 of the particle's cell c, and grid speeds are capped
        at one cell per substep, so `window` substeps move a particle at most window - 1 cells
        before its last P2G; one more cell of slack on each side absorbs rounding.
        """
        n = self.grid.n
        if self.device == "cpu":
            # numpy on the shared buffer: a serial atomic min/max kernel would be slower on one core
            xs = x.numpy()
            # per-column 1-D reductions (numpy's axis-0 reduce of an (N, 3) array is ~10x slower);
            # floor is monotonic, so the extreme cells are the cells of the extreme coordinates
            ends = np.array([xs[:, a].min() for a in range(3)] + [xs[:, a].max() for a in range(3)], np.float64)
            cells = np.floor(ends / self.grid.dx)
            b = np.clip(np.nan_to_num(cells, nan=0.0), 0, n - 1).astype(np.int64)
        else:
            self._bounds.assign(np.array([n, n, n, -1, -1, -1], dtype=np.int32))
            wp.launch(cell_bounds, self.n_particles, inputs=[x, self.g_full, self._bounds], device=self.device)
            b = self._bounds.numpy().astype(np.int64)
        lo = np.maximum(b[:3] - window - 1, 0)
        hi = np.minimum(b[3:] + window + 2, n - 1)
        lo = np.minimum(lo, n - 3)
        dims = np.maximum(hi - lo + 1, 3)
        return self.grid_info(lo, dims)

    def set_fixed_nodes(self, x: wp.array, mass: wp.array, frozen_mass: np.ndarray | None = None) -> None:
        """Fix the grid nodes where anchored particles hold at least half of the mass (fixed_nodes), the
        frozen ones' (frozen_x, masses frozen_mass in kg) counted too."""
        if not self.has_fixed:
            return
        sets = [(x, mass, self.anchor)]
        if self.frozen_x is not None:
            sets.append((self.frozen_x, frozen_mass, self._frozen_anchor))
        self.use_fixed_nodes(fixed_nodes(self.grid, self.device, *sets))

    def use_fixed_nodes(self, fixed: np.ndarray) -> None:
        """Fix these nodes (a flat mask over the whole grid, from fixed_nodes)."""
        self.has_fixed = int(self.has_fixed or fixed.any())  # (anchors whose nodes fix nothing yet still count)
        self.fixed = wp.array(fixed.astype(np.int32), dtype=wp.int32, device=self.device)

    def reset_bad(self) -> None:
        self.bad.fill_(NO_BAD_SUBSTEP)

    def first_bad_substep(self) -> int | None:
        k = int(self.bad.numpy()[0])
        return None if k == NO_BAD_SUBSTEP else k

    def substep(self, st_in: State, st_out: State, mu: wp.array, lam: wp.array, mass: wp.array,
                vol: wp.array, grid_mv: wp.array, grid_v: wp.array, t: float, dt: float,
                k: int, clear: bool, g: GridInfo | None = None, launch=None, clear_grid: bool | None = None,
                stress: wp.array | None = None) -> None:
        """Advance st_in by dt (seconds) into st_out (may be the same object when clear=True).

        t: simulation time at the start of the substep; k: substep index reported on divergence.
        g: node box (default: the whole grid); grid_mv / grid_v hold at least its node count and
        grid_mv must be zero there on entry. With clear=True grid_update leaves it zeroed again and
        the forward-only kernels run (no tape may record them).
        launch: the launcher (default: self.launch on the forward path, which may be threaded, and
        plain wp.launch otherwise, which a wp.Tape records); see threads.LaunchRecord.
        clear_grid=False keeps grid_mv on the forward path (default: clear), for a backward to reuse.
        stress: P2G also writes each particle's Kirchhoff stress there (for a backward to reuse).
        """
        dev = self.device
        g = self.g_full if g is None else g
        kern = untaped if clear else taped
        if launch is None:
            launch = self.launch if clear else wp.launch  # a wp.Tape must see plain launches
        acc = body_acceleration(self.config, t) if self.config.winds else self._gravity
        body_dv = (float(acc[0] * dt), float(acc[1] * dt), float(acc[2] * dt))
        damp = math.exp(-self.config.damping * dt)
        launch(kern.p2g, self.n_particles,
                  inputs=[st_in.x, st_in.v, st_in.C, st_in.F, st_in.plastic, self.material, mu, lam, mass, vol,
                          g, self.pp, self.pokes, float(t), float(dt), int(stress is not None)],
                  outputs=[grid_mv, stress], device=dev)
        launch(kern.grid_update, self.box_nodes(g),
                  inputs=[grid_mv, self.fixed, self.has_fixed, g, self.bnd,
                          wp.vec3(*body_dv), float(damp), float(self.grid.dx / dt), float(t),
                          int(clear if clear_grid is None else clear_grid)],
                  outputs=[grid_v], device=dev)
        launch(kern.g2p, self.n_particles,
               inputs=[st_in.x, st_in.x_err, st_in.F, st_in.F_err, st_in.plastic, self.material, self.anchor, mu, lam,
                       grid_v, g, self.pp, float(dt), int(k)],
               outputs=[st_out.x, st_out.x_err, st_out.v, st_out.C, st_out.F, st_out.F_err, st_out.plastic, self.bad],
               device=dev)
