"""Hand-written adjoints of the taped substep's kernels (kernels.p2g, kernels.grid_update, kernels.g2p).

warp's generated adjoints of these kernels cost 3-4x their forward: each replays the whole forward
(the stress's square root or eigen-solve twice more), adds the gradient of every grid read with an
atomic, and differentiates the compensated updates term by term. Here:

* g2p: one kernel per particle gathers the grid velocities once and scatters dL/dv_node once per
  stencil node; the elastic F update and the compensated advection are differentiated in closed form
  (their compensation terms cancel exactly: x + (step) and its error add up to x + step). Plastic
  return mappings (material > STVK_HENCKY) keep warp's generated adjoint, in a small per-particle
  kernel (`plastic_update`) that runs first and adds into dL/dC_new.
* p2g: one kernel per particle gathers dL/d(node momentum, mass) (no atomics on the particle side)
  and applies constitutive.kirchhoff_stress_vjp, the hand-written stress adjoint of every model, to
  the stress the forward kept (a fifth of this kernel's cost when recomputed) or a recomputed one.
* grid_update: one thread per node differentiates velocity = momentum / mass (+ body forces), the
  one-cell speed cap and the boundaries, whose Jacobian boundary.boundary_response builds beside the
  velocity (the identity away from them); warp's generated adjoint costs 6x the forward kernel.

The covariance keeps its generated adjoint (one thread per particle, no atomics).
SimCore.use_hand_adjoints(False) (DifferentiableSim(adjoints="generated")) replays warp's generated
adjoints of every kernel instead: the readable reference the tests compare against.

Launchers: `Launch` runs these on one thread; threads.SlabLauncher provides the same methods on
particle slabs and node slabs (the g2p adjoint's scatter goes into private grids reduced afterwards).
"""

from __future__ import annotations

import warp as wp

from . import kernels
from .boundary import Boundaries, Pokes, boundary_response, poke_velocity_change, within_boundaries
from .constitutive import STVK_HENCKY, PlasticParams, kirchhoff_stress, kirchhoff_stress_vjp
from .kernels import MIN_NODE_MASS, GridInfo, box_node, bspline_weights, node_is_fixed, stencil_base, update_F
from .replay import Replayer


@wp.func(inline=True)
def bspline_weight_grads(fx: wp.vec3) -> wp.mat33:
    """d bspline_weights / d fx, row by row (each weight depends on its own axis only)."""
    return wp.mat33(
        fx[0] - 1.5, fx[1] - 1.5, fx[2] - 1.5,
        -2.0 * (fx[0] - 1.0), -2.0 * (fx[1] - 1.0), -2.0 * (fx[2] - 1.0),
        fx[0] - 0.5, fx[1] - 0.5, fx[2] - 0.5,
    )


@wp.kernel(enable_backward=False)
def g2p_adjoint(
    x_in: wp.array(dtype=wp.vec3),
    x_err_in: wp.array(dtype=wp.vec3),
    F_in: wp.array(dtype=wp.mat33),
    material: wp.array(dtype=wp.int32),
    anchor: wp.array(dtype=wp.int32),
    grid_v: wp.array(dtype=wp.vec3),
    g: GridInfo,
    dt: float,
    v_out: wp.array(dtype=wp.vec3),
    C_out: wp.array(dtype=wp.mat33),
    adj_x_out: wp.array(dtype=wp.vec3),
    adj_v_out: wp.array(dtype=wp.vec3),
    adj_C_out: wp.array(dtype=wp.mat33),
    adj_F_out: wp.array(dtype=wp.mat33),
    adj_plastic_out: wp.array(dtype=float),
    adj_x_in: wp.array(dtype=wp.vec3),
    adj_x_err_in: wp.array(dtype=wp.vec3),
    adj_F_in: wp.array(dtype=wp.mat33),
    adj_F_err_in: wp.array(dtype=wp.mat33),
    adj_plastic_in: wp.array(dtype=float),
    adj_grid_v: wp.array(dtype=wp.vec3),
):
    """Adjoint of kernels.g2p for one particle (adds into the adj_*_in arrays and adj_grid_v)."""
    p = wp.tid()
    xp = x_in[p]
    bx, by, bz, fx = stencil_base(xp, g)
    w = bspline_weights(fx)
    dw = bspline_weight_grads(fx)
    a_c = adj_C_out[p]  # plastic particles: plastic_update has added their F path already
    if material[p] <= STVK_HENCKY:
        # F_out = F + (dt C_new F + F_err): the compensated error term cancels in exact arithmetic
        a_f = adj_F_out[p]
        f_in = F_in[p]
        a_c = a_c + dt * a_f @ wp.transpose(f_in)
        adj_F_in[p] = adj_F_in[p] + a_f + dt * wp.transpose(C_out[p]) @ a_f
        adj_F_err_in[p] = adj_F_err_in[p] + a_f
        adj_plastic_in[p] = adj_plastic_in[p] + adj_plastic_out[p]
    a_v = wp.vec3(0.0)
    a_x = adj_x_out[p]
    if anchor[p] == 0:
        # x_out = clamp(x + (dt v_new + x_err)): the clamp stops the gradient on the axes it bound
        x_sum = xp + (dt * v_out[p] + x_err_in[p])
        for c in range(3):
            if not (x_sum[c] > g.x_lo[c] and x_sum[c] < g.x_hi[c]):
                a_x[c] = 0.0
        a_v = adj_v_out[p] + dt * a_x
        adj_x_err_in[p] = adj_x_err_in[p] + a_x
    # C_new = k (S - v_new fx^T), S = sum_n w_n v_n (i, j, k)^T, v_new = sum_n w_n v_n
    k4 = 4.0 * g.inv_dx
    a_s = k4 * a_c
    a_nv = a_v - a_s @ fx
    # d(loss)/d(weight) of node (i, j, k) is aw = v_n . d_n; the position gradient sums aw times the
    # weight's partials, which factor by axis: sum over k first (a_k = sum wz aw, b_k = sum wz' aw).
    new_v = wp.vec3(0.0)
    gfx = wp.vec3(0.0)
    s_col0 = wp.vec3(a_s[0, 0], a_s[1, 0], a_s[2, 0])
    s_col1 = wp.vec3(a_s[0, 1], a_s[1, 1], a_s[2, 1])
    s_col2 = wp.vec3(a_s[0, 2], a_s[1, 2], a_s[2, 2])
    ny = g.box_dims[1]
    nz = g.box_dims[2]
    for i in range(3):
        for j in range(3):
            row = ((bx + i) * ny + by + j) * nz + bz
            wij = w[i, 0] * w[j, 1]
            d0 = a_nv + float(i) * s_col0 + float(j) * s_col1
            d1 = d0 + s_col2
            d2 = d1 + s_col2
            v0 = grid_v[row]
            v1 = grid_v[row + 1]
            v2 = grid_v[row + 2]
            # other particles add into the same nodes (on CUDA at the same time; warp's CPU atomics are plain adds)
            wp.atomic_add(adj_grid_v, row, (wij * w[0, 2]) * d0)
            wp.atomic_add(adj_grid_v, row + 1, (wij * w[1, 2]) * d1)
            wp.atomic_add(adj_grid_v, row + 2, (wij * w[2, 2]) * d2)
            aw0 = wp.dot(v0, d0)
            aw1 = wp.dot(v1, d1)
            aw2 = wp.dot(v2, d2)
            a_k = w[0, 2] * aw0 + w[1, 2] * aw1 + w[2, 2] * aw2
            b_k = dw[0, 2] * aw0 + dw[1, 2] * aw1 + dw[2, 2] * aw2
            gfx += wp.vec3(dw[i, 0] * w[j, 1] * a_k, w[i, 0] * dw[j, 1] * a_k, wij * b_k)
            new_v += wij * (w[0, 2] * v0 + w[1, 2] * v1 + w[2, 2] * v2)
    gfx -= wp.transpose(a_s) @ new_v
    adj_x_in[p] = adj_x_in[p] + a_x + g.inv_dx * gfx


@wp.kernel(enable_backward=False)
def p2g_adjoint(
    x: wp.array(dtype=wp.vec3),
    v: wp.array(dtype=wp.vec3),
    C: wp.array(dtype=wp.mat33),
    F: wp.array(dtype=wp.mat33),
    plastic: wp.array(dtype=float),
    material: wp.array(dtype=wp.int32),
    mu: wp.array(dtype=float),
    lam: wp.array(dtype=float),
    mass: wp.array(dtype=float),
    vol: wp.array(dtype=float),
    g: GridInfo,
    pp: PlasticParams,
    pk: Pokes,
    t: float,
    dt: float,
    has_stress: int,
    stress: wp.array(dtype=wp.mat33),
    adj_grid_mv: wp.array(dtype=wp.vec4),
    adj_x: wp.array(dtype=wp.vec3),
    adj_v: wp.array(dtype=wp.vec3),
    adj_C: wp.array(dtype=wp.mat33),
    adj_F: wp.array(dtype=wp.mat33),
    adj_plastic: wp.array(dtype=float),
    adj_mu: wp.array(dtype=float),
    adj_lam: wp.array(dtype=float),
    adj_mass: wp.array(dtype=float),
):
    """Adjoint of kernels.p2g for one particle: gathers dL/d(node momentum, node mass).

    Node n gets w_n (m v + dx A (n - fx), m) with A = ks tau + m C, ks = -dt vol 4 / dx^2.
    The pokes' velocity change is piecewise constant in x: no position gradient.
    has_stress != 0: the forward kept each particle's stress in `stress` (else it is recomputed)."""
    p = wp.tid()
    xp = x[p]
    bx, by, bz, fx = stencil_base(xp, g)
    w = bspline_weights(fx)
    dw = bspline_weight_grads(fx)
    f = F[p]
    m = mass[p]
    c = C[p]
    ks = -dt * vol[p] * 4.0 * g.inv_dx * g.inv_dx
    tau = wp.mat33(0.0)
    if has_stress != 0:
        tau = stress[p]
    else:
        tau = kirchhoff_stress(f, material[p], plastic[p], mu[p], lam[p], pp.snow_xi)
    affine = ks * tau + m * c
    vp = v[p]
    if pk.n > 0:
        vp = vp + poke_velocity_change(xp, pk, t, dt)
    a0 = g.dx * wp.vec3(affine[0, 0], affine[1, 0], affine[2, 0])
    a1 = g.dx * wp.vec3(affine[0, 1], affine[1, 1], affine[2, 1])
    a2 = g.dx * wp.vec3(affine[0, 2], affine[1, 2], affine[2, 2])
    origin_mom = m * vp - fx[0] * a0 - fx[1] * a1 - fx[2] * a2
    # aw = d(loss)/d(weight) of node (i, j, k); the sums over k come first (see g2p_adjoint).
    sum_gm = wp.vec3(0.0)     # sum w g_mom
    sum_gmass = float(0.0)    # sum w g_mass
    t0 = wp.vec3(0.0)         # sum w g_mom * i (and j, k)
    t1 = wp.vec3(0.0)
    t2 = wp.vec3(0.0)
    gfx = wp.vec3(0.0)
    ny = g.box_dims[1]
    nz = g.box_dims[2]
    for i in range(3):
        for j in range(3):
            row = ((bx + i) * ny + by + j) * nz + bz
            wij = w[i, 0] * w[j, 1]
            r0 = origin_mom + float(i) * a0 + float(j) * a1
            r1 = r0 + a2
            r2 = r1 + a2
            g0 = adj_grid_mv[row]
            g1 = adj_grid_mv[row + 1]
            g2 = adj_grid_mv[row + 2]
            m0 = wp.vec3(g0[0], g0[1], g0[2])
            m1 = wp.vec3(g1[0], g1[1], g1[2])
            m2 = wp.vec3(g2[0], g2[1], g2[2])
            aw0 = wp.dot(m0, r0) + g0[3] * m
            aw1 = wp.dot(m1, r1) + g1[3] * m
            aw2 = wp.dot(m2, r2) + g2[3] * m
            a_k = w[0, 2] * aw0 + w[1, 2] * aw1 + w[2, 2] * aw2
            b_k = dw[0, 2] * aw0 + dw[1, 2] * aw1 + dw[2, 2] * aw2
            gfx += wp.vec3(dw[i, 0] * w[j, 1] * a_k, w[i, 0] * dw[j, 1] * a_k, wij * b_k)
            rs = wij * (w[0, 2] * m0 + w[1, 2] * m1 + w[2, 2] * m2)
            sum_gm += rs
            sum_gmass += wij * (w[0, 2] * g0[3] + w[1, 2] * g1[3] + w[2, 2] * g2[3])
            t0 += float(i) * rs
            t1 += float(j) * rs
            t2 += wij * (w[1, 2] * m1 + 2.0 * w[2, 2] * m2)
    adj_affine = g.dx * (wp.matrix_from_cols(t0, t1, t2) - wp.outer(sum_gm, fx))
    gfx -= g.dx * (wp.transpose(affine) @ sum_gm)
    aF, amu, alam, apl = kirchhoff_stress_vjp(f, material[p], plastic[p], mu[p], lam[p], pp.snow_xi,
                                              ks * adj_affine, tau)
    adj_x[p] = adj_x[p] + g.inv_dx * gfx
    adj_v[p] = adj_v[p] + m * sum_gm
    adj_C[p] = adj_C[p] + m * adj_affine
    adj_F[p] = adj_F[p] + aF
    adj_plastic[p] = adj_plastic[p] + apl
    adj_mu[p] = adj_mu[p] + amu
    adj_lam[p] = adj_lam[p] + alam
    adj_mass[p] = adj_mass[p] + wp.dot(vp, sum_gm) + sum_gmass + wp.ddot(c, adj_affine)


@wp.kernel
def plastic_update(
    F_in: wp.array(dtype=wp.mat33),
    F_err_in: wp.array(dtype=wp.mat33),
    C_new: wp.array(dtype=wp.mat33),
    plastic_in: wp.array(dtype=float),
    material: wp.array(dtype=wp.int32),
    mu: wp.array(dtype=float),
    lam: wp.array(dtype=float),
    pp: PlasticParams,
    dt: float,
    F_out: wp.array(dtype=wp.mat33),
    plastic_out: wp.array(dtype=float),
):
    """g2p's F update for the plastic models only; launched for its generated adjoint (the return
    mapping's SVD adjoint), which adds the F path into dL/dC_new before g2p_adjoint reads it."""
    p = wp.tid()
    if material[p] > STVK_HENCKY:
        f_new, f_err, pl_new = update_F(F_in[p], F_err_in[p], C_new[p], material[p], plastic_in[p], mu[p], lam[p],
                                        pp, dt)
        F_out[p] = f_new
        plastic_out[p] = pl_new


@wp.kernel(enable_backward=False)
def grid_update_adjoint(
    grid_mv: wp.array(dtype=wp.vec4),
    fixed: wp.array(dtype=wp.int32),
    has_fixed: int,
    g: GridInfo,
    bnd: Boundaries,
    body_dv: wp.vec3,
    damp: float,
    v_limit: float,
    t: float,
    adj_grid_v: wp.array(dtype=wp.vec3),
    adj_grid_mv: wp.array(dtype=wp.vec4),
):
    """Adjoint of kernels.grid_update for one node: adds into adj_grid_mv and, as warp's generated adjoint
    of the store does, consumes adj_grid_v (zeroes it). Empty and fixed nodes get nothing (their velocity
    is a constant); the boundaries' Jacobian is the identity away from them."""
    idx = wp.tid()
    a = adj_grid_v[idx]
    adj_grid_v[idx] = wp.vec3(0.0)
    mv = grid_mv[idx]
    m = mv[3]
    if m <= MIN_NODE_MASS:
        return
    i, j, k = box_node(idx, g)
    if node_is_fixed(fixed, has_fixed, g, i, j, k):
        return
    mom = wp.vec3(mv[0], mv[1], mv[2])
    vel = (mom / m + body_dv) * damp
    jac = wp.identity(n=3, dtype=float)
    pos = g.origin + g.dx * wp.vec3(float(i), float(j), float(k))
    if not within_boundaries(pos, bnd, t):  # (the Jacobian's walk costs more than the whole update elsewhere)
        vel, jac = boundary_response(vel, pos, bnd, t)
    speed = wp.length(vel)
    if speed > v_limit:  # vel * (v_limit / |vel|): only the direction's change passes
        u = vel / speed
        a = (v_limit / speed) * (a - wp.dot(u, a) * u)
    a = damp * (wp.transpose(jac) @ a)  # dL / d(momentum / mass)
    adj_grid_mv[idx] = adj_grid_mv[idx] + wp.vec4(a[0] / m, a[1] / m, a[2] / m, -wp.dot(a, mom) / (m * m))


class Launch:
    """One-thread launches of particle kernels (threads.SlabLauncher has the same methods). On the CPU the
    hand-written adjoints and warp's generated ones (the grid update's) go through a replay.Replayer, like
    the forward kernels: they run every substep with mostly the same arguments, and packing their 20-odd
    arguments anew costs as much as a small object's kernel."""

    def __init__(self, device: str):
        self.device = device
        self._launch = Replayer(device) if str(device) == "cpu" else wp.launch

    def particles(self, kernel, n: int, args: list, scatter: str | None = None) -> None:
        """Forward launch of a particle kernel; `scatter` names the grid argument it adds into."""
        self._launch(kernel, n, inputs=args, device=self.device)

    def particles_adjoint(self, kernel, n: int, args: list, adj: list) -> None:
        """warp's generated adjoint of a particle kernel."""
        self.generated(kernel, n, args, adj)

    def nodes(self, kernel, dim: int, args: list) -> None:
        """A kernel over the nodes of a box (its GridInfo argument `g`), one thread per node."""
        self._launch(kernel, dim, inputs=args, device=self.device)

    def generated(self, kernel, dim, args: list, adj: list, device=None) -> None:
        if isinstance(self._launch, Replayer):
            self._launch.adjoint(kernel, dim, args, adj)
        else:
            wp.launch(kernel, dim, inputs=args, adj_inputs=adj, adjoint=True, device=self.device)


class HandAdjoints:
    """The reverse launch of a recorded substep kernel (threads.LaunchRecord.backward's `adjoint`):
    hand-written for p2g, grid_update and g2p, warp's generated adjoint for the others."""

    def __init__(self, launcher, n_particles: int, has_plastic: bool, device: str):
        self.launcher = launcher
        self.n = n_particles
        self.has_plastic = has_plastic
        self.device = device
        self._scratch = None
        self._loaded = False

    def __call__(self, kernel, dim, args: list, adj: list, device=None) -> None:
        if not self._loaded:  # here, before any slab thread launches from it (no concurrent compile / load)
            wp.load_module(__name__, device=self.device)
            self._loaded = True
        if kernel is kernels.g2p:
            self._g2p(dict(zip(_names(kernel), args)), dict(zip(_names(kernel), adj)))
        elif kernel is kernels.p2g:
            self._p2g(dict(zip(_names(kernel), args)), dict(zip(_names(kernel), adj)))
        elif kernel is kernels.grid_update:
            self._grid_update(dim, dict(zip(_names(kernel), args)), dict(zip(_names(kernel), adj)))
        else:
            self.launcher.generated(kernel, dim, args, adj, device)

    def _g2p(self, a: dict, d: dict) -> None:
        n = self.n
        if self.has_plastic:
            if self._scratch is None:  # plastic_update's forward outputs (the replay needs somewhere to write)
                self._scratch = (wp.zeros(n, dtype=wp.mat33, device=self.device),
                                 wp.zeros(n, dtype=float, device=self.device))
            f_out, pl_out = self._scratch
            self.launcher.particles_adjoint(
                plastic_update, n,
                [a["F_in"], a["F_err_in"], a["C_out"], a["plastic_in"], a["material"], a["mu"], a["lam"], a["pp"],
                 a["dt"], f_out, pl_out],
                [d["F_in"], d["F_err_in"], d["C_out"], d["plastic_in"], None, d["mu"], d["lam"], d["pp"], 0.0,
                 d["F_out"], d["plastic_out"]])
        self.launcher.particles(
            g2p_adjoint, n,
            [a["x_in"], a["x_err_in"], a["F_in"], a["material"], a["anchor"], a["grid_v"], a["g"], a["dt"],
             a["v_out"], a["C_out"], d["x_out"], d["v_out"], d["C_out"], d["F_out"], d["plastic_out"],
             d["x_in"], d["x_err_in"], d["F_in"], d["F_err_in"], d["plastic_in"], d["grid_v"]],
            scatter="adj_grid_v")

    def _p2g(self, a: dict, d: dict) -> None:
        self.launcher.particles(
            p2g_adjoint, self.n,
            [a["x"], a["v"], a["C"], a["F"], a["plastic"], a["material"], a["mu"], a["lam"], a["mass"], a["vol"],
             a["g"], a["pp"], a["pk"], a["t"], a["dt"], a["keep_stress"], a["stress_out"], d["grid_mv"],
             d["x"], d["v"], d["C"], d["F"], d["plastic"], d["mu"], d["lam"], d["mass"]])

    def _grid_update(self, dim: int, a: dict, d: dict) -> None:
        if d["grid_mv"] is None or d["grid_v"] is None:  # no gradient flows through this grid
            return
        self.launcher.nodes(
            grid_update_adjoint, dim,
            [a["grid_mv"], a["fixed"], a["has_fixed"], a["g"], a["bnd"], a["body_dv"], a["damp"], a["v_limit"],
             a["t"], d["grid_v"], d["grid_mv"]])


def _names(kernel) -> list[str]:
    return [arg.label for arg in kernel.adj.args]
