"""A readable torch (float64) reference of ONE MLS-MPM substep, as the warp kernels define it.

It is shipped beside the kernels (kernels.py, constitutive.py, boundary.py) so that they can be
checked against plain tensor code (tests/mpm/test_reference.py); the product never runs it.
Everything is vectorised over particles and written for reading, not speed: one function per
stage, dense grids of n^3 nodes, SVD / eigendecompositions instead of closed forms.

Conventions are the solver's: domain-local positions (metres from grid node 0, node (i, j, k)
at (i, j, k) dx), quadratic B-splines over a 3x3x3 stencil, grid arrays indexed [i, j, k].
One substep (Hu et al. 2018, MLS-MPM; Jiang et al. 2015, APIC):

    P2G   m_i = sum_p w_ip m_p,   (m v)_i = sum_p w_ip (m_p v_p + A_p (x_i - x_p)),
          A_p = m_p C_p - dt V_p (4 / dx^2) tau_p            (tau: Kirchhoff stress)
    grid  v_i = ((m v)_i / m_i + g dt) exp(-damping dt), then anchors, boundaries, speed cap dx / dt
    G2P   v_p = sum_i w_ip v_i,   C_p = (4 / dx^2) sum_i w_ip v_i (x_i - x_p)^T,
          F_p <- return_mapping((I + dt C_p) F_p),   x_p <- clamp(x_p + dt v_p)

The kernels add x and F with compensated (Kahan) sums and carry the rounding error (x_err,
F_err) to the next substep; in float64 the sum x + dt v + x_err is exact enough to need no
carry, so the reference returns the sum and the kernels' x + x_err is what compares with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .config import MaterialModel, Plasticity, SimConfig
from .constitutive import MIN_STRETCH
from .core import FIXED_NODE_FRACTION
from .grid import SNOW_HARDENING_RANGE, GridMapping
from .kernels import MIN_NODE_MASS

F64 = torch.float64
# Offsets of the 3x3x3 stencil, in the kernels' loop order (i slowest).
OFFSETS = [(i, j, k) for i in range(3) for j in range(3) for k in range(3)]
M = MaterialModel


def tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, np.float64), dtype=F64)


# ------------------------------------------------------------------------------------ setup
@dataclass
class Contact:
    """A boundary's response: kind (protocol.BOUNDARY_KINDS: sticky, slip, frictional), Coulomb friction."""

    kind: str
    friction: float


@dataclass
class Collider:
    """Kinematic box (domain-local keyframed centres, piecewise linear in time)."""

    times: np.ndarray
    centers: np.ndarray
    half: np.ndarray
    contact: Contact


@dataclass
class PokeSphere:
    """Acceleration accel (m/s^2) on the particles inside the sphere during [start, end) seconds."""

    center: np.ndarray
    radius: float
    accel: np.ndarray
    start: float
    end: float


@dataclass
class Setup:
    """Everything a substep needs besides the particles, in the domain-local frame."""

    n: int
    dx: float
    dom_min: np.ndarray
    dom_max: np.ndarray
    config: SimConfig
    walls: Contact
    ground: tuple | None = None          # (height, Contact)
    colliders: list = field(default_factory=list)
    pokes: list = field(default_factory=list)
    fixed: torch.Tensor | None = None    # (n, n, n) bool: nodes held by the anchors

    @classmethod
    def build(cls, config: SimConfig, grid: GridMapping, fixed: np.ndarray | None = None) -> "Setup":
        """The config's boundaries and pokes shifted into the domain-local frame (world - origin)."""
        o = np.asarray(grid.origin, np.float64)
        ground = None
        if config.ground is not None:
            ground = (config.ground.height - o[2], Contact(config.ground.kind, config.ground.friction))
        colliders = [Collider(np.asarray(c.times, np.float64), np.asarray(c.centers, np.float64) - o,
                              np.asarray(c.half_extents, np.float64), Contact(c.kind, c.friction))
                     for c in config.colliders]
        pokes = []
        for p in config.pokes:
            d = np.asarray(p.direction, np.float64)
            pokes.append(PokeSphere(np.asarray(p.center, np.float64) - o, p.radius, d / np.linalg.norm(d) * p.strength,
                                    p.start, math.inf if p.end is None else p.end))
        n = grid.n
        return cls(n=n, dx=grid.dx, dom_min=grid.domain_min - o, dom_max=grid.domain_max - o, config=config,
                   walls=Contact(config.walls.kind, config.walls.friction), ground=ground, colliders=colliders,
                   pokes=pokes, fixed=None if fixed is None else torch.as_tensor(fixed.reshape(n, n, n) != 0))


@dataclass
class Particles:
    """Per-particle constants: mu, lam (Pa), mass (kg), vol (m^3), material (ids), anchor (bool)."""

    mu: torch.Tensor
    lam: torch.Tensor
    mass: torch.Tensor
    vol: torch.Tensor
    material: torch.Tensor
    anchor: torch.Tensor


# ------------------------------------------------------------------------------------ helpers
def eye(n: int) -> torch.Tensor:
    return torch.eye(3, dtype=F64).expand(n, 3, 3)


def diag(s: torch.Tensor) -> torch.Tensor:
    return torch.diag_embed(s)


def det(A: torch.Tensor) -> torch.Tensor:
    """det of (N, 3, 3) as the triple product of the rows (torch.linalg.det's batched LU is ~100x slower here)."""
    return (torch.linalg.cross(A[:, 0], A[:, 1]) * A[:, 2]).sum(-1)


def svd(F: torch.Tensor):
    """F = U diag(s) V^T with U, V proper rotations (the last singular value takes det's sign)."""
    U, s, Vh = torch.linalg.svd(F)
    sign = torch.sign(det(U) * det(Vh))
    U = U.clone()
    U[:, :, 2] *= sign[:, None]
    s = s.clone()
    s[:, 2] *= sign
    return U, s, Vh.transpose(1, 2)


def compose(U, s, V) -> torch.Tensor:
    return U @ diag(s) @ V.transpose(1, 2)


def sym_log(b: torch.Tensor) -> torch.Tensor:
    """log of a symmetric positive definite matrix, eigenvalues floored at 1e-12 (as the kernel)."""
    d, Q = torch.linalg.eigh(0.5 * (b + b.transpose(1, 2)))
    return Q @ diag(torch.log(d.clamp_min(1e-12))) @ Q.transpose(1, 2)


def stencil(x: torch.Tensor, s: Setup):
    """Lower stencil node (N, 3) int and the offset fx of x from it in cells; base = trunc(x / dx - 1/2),
    clamped so the stencil stays on the grid."""
    xg = x / s.dx
    base = torch.trunc(xg - 0.5).long().clamp(0, s.n - 3)
    return base, xg - base.to(F64)


def bspline_weights(fx: torch.Tensor) -> torch.Tensor:
    """Quadratic B-spline weights (N, 3 offsets, 3 axes): 1/2 (3/2 - f)^2, 3/4 - (f - 1)^2, 1/2 (f - 1/2)^2."""
    return torch.stack([0.5 * (1.5 - fx) ** 2, 0.75 - (fx - 1.0) ** 2, 0.5 * (fx - 0.5) ** 2], dim=1)


def node_index(base: torch.Tensor, off, n: int) -> torch.Tensor:
    """Flat index (i n + j) n + k of the stencil node base + off."""
    return ((base[:, 0] + off[0]) * n + base[:, 1] + off[1]) * n + base[:, 2] + off[2]


def node_weights(w: torch.Tensor, off) -> torch.Tensor:
    i, j, k = off
    return w[:, i, 0] * w[:, j, 1] * w[:, k, 2]


# ------------------------------------------------------------------------------------ stress
def corotated_stress(F, mu, lam) -> torch.Tensor:
    """Fixed-corotated (Stomakhin 2012): tau = 2 mu (F - R) F^T + lam J (J - 1) I, R = polar rotation of F."""
    U, _, V = svd(F)
    R = U @ V.transpose(1, 2)
    J = det(F)
    return 2.0 * mu[:, None, None] * (F - R) @ F.transpose(1, 2) + (lam * J * (J - 1.0))[:, None, None] * eye(len(F))


def neo_hookean_stress(F, mu, lam) -> torch.Tensor:
    """Neo-Hookean: tau = mu (F F^T - I) + lam log J I (J floored at 1e-6)."""
    J = det(F).clamp_min(1e-6)
    return mu[:, None, None] * (F @ F.transpose(1, 2) - eye(len(F))) + (lam * torch.log(J))[:, None, None] * eye(len(F))


def hencky_stress(F, mu, lam) -> torch.Tensor:
    """StVK-Hencky: tau = mu log(b) + lam/2 tr(log b) I with b = F F^T (= 2 mu log V + lam log J I)."""
    lg = sym_log(F @ F.transpose(1, 2))
    tr = torch.diagonal(lg, dim1=1, dim2=2).sum(-1)
    return mu[:, None, None] * lg + (0.5 * lam * tr)[:, None, None] * eye(len(F))


def snow_hardening(Jp: torch.Tensor, xi: float) -> torch.Tensor:
    """Stomakhin 2013: Lame parameters scale by exp(xi (1 - Jp)), clamped to SNOW_HARDENING_RANGE."""
    return torch.exp(xi * (1.0 - Jp)).clamp(*SNOW_HARDENING_RANGE)


def kirchhoff_stress(F, material, plastic, mu, lam, plasticity: Plasticity) -> torch.Tensor:
    """Kirchhoff stress (N, 3, 3) of the elastic F per particle model; the plastic models other than snow
    use StVK-Hencky elasticity, snow the fixed-corotated law with hardened moduli."""
    h = torch.where(material == int(M.SNOW), snow_hardening(plastic, plasticity.snow_hardening), 1.0)
    out = hencky_stress(F, mu, lam)
    for model, stress in ((M.FIXED_COROTATED, corotated_stress(F, mu, lam)),
                          (M.NEO_HOOKEAN, neo_hookean_stress(F, mu, lam)),
                          (M.SNOW, corotated_stress(F, mu * h, lam * h))):
        out = torch.where((material == int(model))[:, None, None], stress, out)
    return out


# ------------------------------------------------------------------------------------ plasticity
# Each return mapping below gives the projected singular values, the new plastic state and whether it
# projected at all (where it did not, F passes through untouched).
def snow_return(s, Jp, pl: Plasticity):
    """Clamp the singular values to [1 - theta_c, 1 + theta_s]; Jp absorbs the volume change (kept in [0.05, 20])."""
    sc = s.clamp(1.0 - pl.snow_theta_c, 1.0 + pl.snow_theta_s)
    Jp_new = (Jp * s.prod(-1) / sc.prod(-1)).clamp(0.05, 20.0)
    return sc, Jp_new, (sc != s).any(-1)


def hencky_strain(s):
    """Logarithmic principal strains, their trace and deviator (and its norm)."""
    eps = torch.log(s.clamp_min(MIN_STRETCH))
    tr = eps.sum(-1)
    dev = eps - tr[:, None] / 3.0
    return eps, tr, dev, dev.norm(dim=-1)


def von_mises_return(s, plastic, material, mu, pl: Plasticity, dt: float):
    """Radial return on |dev eps| = yield / (2 mu): von Mises (linear hardening), plasticine (softening)
    and foam (viscoplastic: the step scaled by 1 / (1 + viscosity / (2 mu dt)))."""
    eps, _, dev, dev_norm = hencky_strain(s)
    ys = torch.full_like(plastic, pl.yield_stress)
    ys = torch.where(material == int(M.VON_MISES), ys * (1.0 + pl.hardening * plastic), ys)
    ys = torch.where(material == int(M.PLASTICINE), ys / (1.0 + pl.softening * plastic), ys)
    dg = dev_norm - ys / (2.0 * mu)
    dg = torch.where(material == int(M.FOAM), dg / (1.0 + pl.viscosity / (2.0 * mu * dt)), dg)
    flows = (dev_norm - ys / (2.0 * mu) > 0) & (dev_norm > 0)
    step = torch.where(flows, dg / torch.where(flows, dev_norm, 1.0), 0.0)
    return torch.exp(eps - step[:, None] * dev), plastic + torch.where(flows, dg, 0.0), flows


def drucker_prager_return(s, plastic, mu, lam, pl: Plasticity):
    """Sand (Klar 2016): expansion beyond the cohesion goes to the cone's tip (eps = cohesion / 3 each);
    otherwise dg = |dev eps| + (3 lam + 2 mu) / (2 mu) (tr eps - cohesion) alpha, and dg > 0 projects
    the deviator back onto the cone."""
    eps, tr, dev, dev_norm = hencky_strain(s)
    excess = tr - pl.cohesion
    tip = excess >= 0
    dg = dev_norm + (3.0 * lam + 2.0 * mu) / (2.0 * mu) * excess * pl.dp_alpha
    flows = ~tip & (dg > 0) & (dev_norm > 0)
    step = torch.where(flows, dg / torch.where(flows, dev_norm, 1.0), 0.0)
    eps_new = torch.where(tip[:, None], torch.full_like(eps, pl.cohesion / 3.0), eps - step[:, None] * dev)
    plastic_new = plastic + torch.where(tip, dev_norm, torch.where(flows, dg, 0.0))
    return torch.exp(eps_new), plastic_new, tip | flows


def return_mapping(F, material, plastic, mu, lam, pl: Plasticity, dt: float):
    """Project the trial elastic F onto each plastic model's yield surface; returns (F, plastic).
    plastic: accumulated plastic strain, or Jp for snow. Elastic models pass through unchanged."""
    U, s, V = svd(F)
    s_snow, Jp, snow_projected = snow_return(s, plastic, pl)
    s_vm, pl_vm, vm_projected = von_mises_return(s, plastic, material, mu, pl, dt)
    s_dp, pl_dp, dp_projected = drucker_prager_return(s, plastic, mu, lam, pl)
    snow = material == int(M.SNOW)
    dp = material == int(M.DRUCKER_PRAGER)
    s_new = torch.where(snow[:, None], s_snow, torch.where(dp[:, None], s_dp, s_vm))
    pl_new = torch.where(snow, Jp, torch.where(dp, pl_dp, pl_vm))
    # A singular value floored at MIN_STRETCH also changes F (the Hencky models).
    projected = torch.where(snow, snow_projected, torch.where(dp, dp_projected, vm_projected)
                            | (s < MIN_STRETCH).any(-1))
    keep = (material <= int(M.STVK_HENCKY)) | ~projected
    return torch.where(keep[:, None, None], F, compose(U, s_new, V)), torch.where(keep, plastic, pl_new)


# ------------------------------------------------------------------------------------ P2G
def poke_velocity_change(x, s: Setup, t: float, dt: float) -> torch.Tensor:
    """dt * acceleration of the pokes active at t ([start, end)) whose sphere holds the particle."""
    dv = torch.zeros_like(x)
    for p in s.pokes:
        if p.start <= t < p.end:
            inside = (x - tensor(p.center)).norm(dim=-1) < p.radius
            dv = dv + torch.where(inside[:, None], dt * tensor(p.accel), 0.0)
    return dv


def p2g(state: dict, parts: Particles, s: Setup, t: float, dt: float):
    """Grid momentum (n, n, n, 3) kg m/s and mass (n, n, n) kg (MLS-MPM: stress and APIC in one affine matrix)."""
    x, n = state["x"], s.n
    base, fx = stencil(x, s)
    w = bspline_weights(fx)
    tau = kirchhoff_stress(state["F"], parts.material, state["plastic"], parts.mu, parts.lam, s.config.plasticity)
    affine = (-dt * parts.vol * 4.0 / s.dx**2)[:, None, None] * tau + parts.mass[:, None, None] * state["C"]
    mv = parts.mass[:, None] * (state["v"] + poke_velocity_change(x, s, t, dt))
    mom = torch.zeros(n**3, 3, dtype=F64)
    mass = torch.zeros(n**3, dtype=F64)
    for off in OFFSETS:
        wn = node_weights(w, off)
        dpos = s.dx * (tensor(off) - fx)                          # x_i - x_p
        node = node_index(base, off, n)
        mom.index_add_(0, node, wn[:, None] * (mv + (affine @ dpos[:, :, None])[:, :, 0]))
        mass.index_add_(0, node, wn * parts.mass)
    return mom.reshape(n, n, n, 3), mass.reshape(n, n, n)


# ------------------------------------------------------------------------------------ grid update
def contact_response(v, normal, c: Contact) -> torch.Tensor:
    """Velocity after contact with a boundary of unit normal (into the free region): sticky stops it; slip
    removes an inward normal part; frictional also reduces the tangential speed by mu |v_n| (to 0 at most)."""
    if c.kind == "sticky":
        return torch.zeros_like(v)
    vn = (v * normal).sum(-1, keepdim=True)
    vt = v - vn * normal
    out = vt
    if c.kind == "frictional":
        vt_len = vt.norm(dim=-1, keepdim=True)
        stuck = vt_len <= -c.friction * vn
        out = torch.where(stuck, 0.0, vt * (1.0 + c.friction * vn / torch.where(stuck, 1.0, vt_len)))
    return torch.where(vn >= 0, v, out)


def collider_motion(c: Collider, t: float):
    """Centre and velocity of a keyframed box at t: held before the first / after the last key."""
    times, centers = c.times, c.centers
    if len(times) == 1 or t <= times[0]:
        return centers[0], np.zeros(3)
    if t >= times[-1]:
        return centers[-1], np.zeros(3)
    k = int(np.searchsorted(times, t, side="right")) - 1
    vel = (centers[k + 1] - centers[k]) / (times[k + 1] - times[k])
    return centers[k] + (t - times[k]) * vel, vel


def apply_boundaries(v, pos, s: Setup, t: float) -> torch.Tensor:
    """Walls (axis by axis, low face then high face), the ground, then each collider (in its own frame,
    normal of the face of least penetration)."""
    planes = []  # (nodes touched, inward normal, response)
    for a in range(3):
        for at_face, sign in ((pos[..., a] <= s.dom_min[a], 1.0), (pos[..., a] >= s.dom_max[a], -1.0)):
            planes.append((at_face, tensor(np.eye(3)[a] * sign), s.walls))
    if s.ground is not None:
        height, contact = s.ground
        planes.append((pos[..., 2] <= height, tensor([0.0, 0.0, 1.0]), contact))
    out = v
    for mask, normal, contact in planes:
        out = torch.where(mask[..., None], contact_response(out, normal.expand_as(v), contact), out)
    for c in s.colliders:
        center, vel = collider_motion(c, t)
        d = pos - tensor(center)
        pen = tensor(c.half) - d.abs()
        inside = (pen > 0).all(-1)
        axis = torch.argmin(pen, dim=-1)  # first axis of least penetration, as the kernel's strict '<'
        normal = torch.nn.functional.one_hot(axis, 3).to(F64)
        normal = normal * torch.where(d.gather(-1, axis[..., None]) < 0, -1.0, 1.0)
        moved = contact_response(out - tensor(vel), normal, c.contact) + tensor(vel)
        out = torch.where(inside[..., None], moved, out)
    return out


def grid_update(mom, mass, s: Setup, t: float, dt: float) -> torch.Tensor:
    """Node velocities (n, n, n, 3): momentum / mass plus gravity and winds, damped; zero on anchored
    nodes; boundaries; speed capped at one cell per substep. Nodes without mass (<= MIN_NODE_MASS) stay 0."""
    cfg = s.config
    acc = tensor(cfg.gravity) + sum((tensor(w.acceleration(t)) for w in cfg.winds), torch.zeros(3, dtype=F64))
    has_mass = mass > MIN_NODE_MASS
    v = (mom / torch.where(has_mass, mass, 1.0)[..., None] + acc * dt) * math.exp(-cfg.damping * dt)
    if s.fixed is not None:
        v = torch.where(s.fixed[..., None], 0.0, v)
    idx = torch.arange(s.n, dtype=F64)
    pos = s.dx * torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), dim=-1)
    v = apply_boundaries(v, pos, s, t)
    speed = v.norm(dim=-1, keepdim=True)
    v_limit = s.dx / dt
    v = torch.where(speed > v_limit, v * v_limit / torch.where(speed > 0, speed, 1.0), v)
    return torch.where(has_mass[..., None], v, 0.0)


# ------------------------------------------------------------------------------------ G2P
def g2p(state: dict, parts: Particles, grid_v, s: Setup, dt: float) -> dict:
    """New particle state: APIC velocity and C from the grid, F <- return_mapping((I + dt C) F) (plus the
    carried F_err), x advected (anchors stay) and clamped to [dx, (n - 2) dx]."""
    x, n = state["x"], s.n
    base, fx = stencil(x, s)
    w = bspline_weights(fx)
    v = torch.zeros_like(x)
    C = torch.zeros_like(state["C"])
    gv = grid_v.reshape(-1, 3)
    for off in OFFSETS:
        wn = node_weights(w, off)
        node = node_index(base, off, n)
        vi = wn[:, None] * gv[node]
        v = v + vi
        C = C + (4.0 / s.dx) * vi[:, :, None] * (tensor(off) - fx)[:, None, :]   # 4/dx^2 w v (x_i - x_p)^T
    F_trial = state["F"] + dt * C @ state["F"] + state.get("F_err", 0.0)
    F, plastic = return_mapping(F_trial, parts.material, state["plastic"], parts.mu, parts.lam,
                                s.config.plasticity, dt)
    v = torch.where(parts.anchor[:, None], 0.0, v)
    moved = (x + dt * v + state.get("x_err", 0.0)).clamp(s.dx, (n - 2) * s.dx)
    x_new = torch.where(parts.anchor[:, None], x, moved)
    return {"x": x_new, "v": v, "C": C, "F": F, "plastic": plastic}


# ------------------------------------------------------------------------------------ one substep
def substep(state: dict, parts: Particles, s: Setup, t: float, dt: float) -> dict:
    """One MLS-MPM substep from time t (seconds) to t + dt; state: x, v, C, F, plastic (+ x_err, F_err)."""
    mom, mass = p2g(state, parts, s, t, dt)
    grid_v = grid_update(mom, mass, s, t, dt)
    return g2p(state, parts, grid_v, s, dt)


def fixed_nodes(x, mass, anchor, s: Setup) -> torch.Tensor:
    """Nodes (n, n, n) where anchored particles hold at least FIXED_NODE_FRACTION of the mass."""
    base, fx = stencil(x, s)
    w = bspline_weights(fx)
    n = s.n
    total = torch.zeros(n**3, dtype=F64)
    held = torch.zeros(n**3, dtype=F64)
    for off in OFFSETS:
        node = node_index(base, off, n)
        wm = node_weights(w, off) * mass
        total.index_add_(0, node, wm)
        held.index_add_(0, node, torch.where(anchor, wm, 0.0))
    return ((held >= FIXED_NODE_FRACTION * total) & (total > 0)).reshape(n, n, n)



def rollout(state: dict, parts: Particles, s: Setup, dt: float, n_substeps: int, t0: float = 0.0):
    """Yield the state after each of n_substeps substeps of dt seconds, starting at time t0."""
    for k in range(n_substeps):
        state = substep(state, parts, s, t0 + k * dt, dt)
        yield state
