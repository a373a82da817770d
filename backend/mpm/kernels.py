"""MLS-MPM / APIC substep kernels (quadratic B-splines, 3x3x3 stencil), SI units, domain-local positions
(metres from the first grid node; see GridMapping.to_local).

One substep = p2g (stress fused in) -> grid_update (forces, boundaries) -> g2p (APIC transfer,
F update, return mapping, advection). The same functions serve the forward baking path (state
updated in place, grid cleared inside grid_update; compiled without adjoints in
kernels_forward.py, which halves the first compile) and the taped gradient path (fresh arrays
per substep, clear = 0), so both compute the same physics.

Grid memory: grid_mv[node] = (momentum xyz in kg m/s, mass in kg), node = (i * n + j) * n + k.
"""

from __future__ import annotations

import warp as wp

from .boundary import Boundaries, Pokes, apply_boundaries, poke_velocity_change
from .constitutive import STVK_HENCKY, PlasticParams, kirchhoff_stress, return_mapping


MIN_NODE_MASS = wp.constant(1.0e-18)  # kg; its square is still a normal float32


@wp.struct
class GridInfo:
    """Node (i, j, k) sits at origin + (i, j, k) * dx, 0 <= i, j, k < n. x_lo/x_hi: particle clamp
    box (metres). Grid arrays hold only the box of nodes box_lo .. box_lo + box_dims - 1, laid
    out as ((i - lo_i) * dims_j + (j - lo_j)) * dims_k + (k - lo_k); the box covers every stencil
    of the particles (see SimCore.particle_box), so work and taped memory scale with the object,
    not with the domain."""

    origin: wp.vec3
    dx: float
    inv_dx: float
    n: int
    x_lo: wp.vec3
    x_hi: wp.vec3
    box_lo: wp.vec3i
    box_dims: wp.vec3i


@wp.func(inline=True)
def stencil_base(x: wp.vec3, g: GridInfo):
    """Lower stencil node in box coordinates (clamped so the 3x3x3 stencil is always inside the
    box) and the fractional offset of x from it in cells."""
    xg = (x - g.origin) * g.inv_dx
    bx = wp.clamp(int(xg[0] - 0.5), g.box_lo[0], g.box_lo[0] + g.box_dims[0] - 3)
    by = wp.clamp(int(xg[1] - 0.5), g.box_lo[1], g.box_lo[1] + g.box_dims[1] - 3)
    bz = wp.clamp(int(xg[2] - 0.5), g.box_lo[2], g.box_lo[2] + g.box_dims[2] - 3)
    fx = xg - wp.vec3(float(bx), float(by), float(bz))
    return bx - g.box_lo[0], by - g.box_lo[1], bz - g.box_lo[2], fx


@wp.func(inline=True)
def bspline_weights(fx: wp.vec3) -> wp.mat33:
    """Quadratic B-spline weights; row i = weights of stencil offset i along x, y, z."""
    a = wp.vec3(1.5) - fx
    b = fx - wp.vec3(1.0)
    c = fx - wp.vec3(0.5)
    return wp.mat33(
        0.5 * a[0] * a[0], 0.5 * a[1] * a[1], 0.5 * a[2] * a[2],
        0.75 - b[0] * b[0], 0.75 - b[1] * b[1], 0.75 - b[2] * b[2],
        0.5 * c[0] * c[0], 0.5 * c[1] * c[1], 0.5 * c[2] * c[2],
    )


@wp.func
def update_F(f_in: wp.mat33, f_err_in: wp.mat33, new_c: wp.mat33, material: int, plastic: float, mu: float,
             lam: float, pp: PlasticParams, dt: float):
    """F <- F + dt C F, then the return mapping; returns (F, F_err, plastic).

    Compensated (as x in g2p): increments far below ulp(F) ~ 1e-7 (slow creep, small substeps)
    would otherwise be rounded away or up, a bias that makes statics drift."""
    f_step = dt * new_c @ f_in + f_err_in
    f_trial = f_in + f_step
    f_err = f_step - (f_trial - f_in)
    f_new, pl_new = return_mapping(f_trial, material, plastic, mu, lam, pp, dt)
    if material > STVK_HENCKY:
        f_err = wp.mat33(0.0)  # a plastic projection replaces F: nothing to carry
    return f_new, f_err, pl_new


def p2g_impl(
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
    keep_stress: int,
    grid_mv: wp.array(dtype=wp.vec4),
    stress_out: wp.array(dtype=wp.mat33),
):
    """keep_stress != 0 also writes each particle's Kirchhoff stress to stress_out (for a backward that
    would otherwise recompute it; None when 0)."""
    p = wp.tid()
    xp = x[p]
    bx, by, bz, fx = stencil_base(xp, g)
    w = bspline_weights(fx)
    stress = kirchhoff_stress(F[p], material[p], plastic[p], mu[p], lam[p], pp.snow_xi)
    if keep_stress != 0:
        stress_out[p] = stress
    m = mass[p]
    # MLS-MPM: the stress force and the APIC affine momentum share one matrix (world units);
    # node momentum = weight * (m v + affine (x_node - x_p)), expanded per stencil offset.
    affine = (-dt * vol[p] * 4.0 * g.inv_dx * g.inv_dx) * stress + m * C[p]
    vp = v[p]
    if pk.n > 0:
        vp = vp + poke_velocity_change(xp, pk, t, dt)
    a0 = g.dx * wp.vec3(affine[0, 0], affine[1, 0], affine[2, 0])
    a1 = g.dx * wp.vec3(affine[0, 1], affine[1, 1], affine[2, 1])
    a2 = g.dx * wp.vec3(affine[0, 2], affine[1, 2], affine[2, 2])
    origin_mom = m * vp - fx[0] * a0 - fx[1] * a1 - fx[2] * a2
    ny = g.box_dims[1]
    nz = g.box_dims[2]
    for i in range(3):
        for j in range(3):
            wij = w[i, 0] * w[j, 1]
            row = ((bx + i) * ny + by + j) * nz + bz
            r = origin_mom + float(i) * a0 + float(j) * a1
            for k in range(3):
                weight = wij * w[k, 2]
                mom = weight * (r + float(k) * a2)
                wp.atomic_add(grid_mv, row + k, wp.vec4(mom[0], mom[1], mom[2], weight * m))


@wp.func(inline=True)
def box_node(idx: int, g: GridInfo):
    """Grid coordinates (i, j, k) of node idx of g's node box."""
    ny = g.box_dims[1]
    nz = g.box_dims[2]
    return g.box_lo[0] + idx // (ny * nz), g.box_lo[1] + (idx // nz) % ny, g.box_lo[2] + idx % nz


@wp.func(inline=True)
def node_is_fixed(fixed: wp.array(dtype=wp.int32), has_fixed: int, g: GridInfo, i: int, j: int, k: int) -> bool:
    """Whether an anchor holds grid node (i, j, k) (fixed: the full grid's node mask, read when has_fixed)."""
    held = False
    if has_fixed != 0:
        held = fixed[(i * g.n + j) * g.n + k] != 0
    return held


def grid_update_impl(
    grid_mv: wp.array(dtype=wp.vec4),
    fixed: wp.array(dtype=wp.int32),
    has_fixed: int,
    g: GridInfo,
    bnd: Boundaries,
    body_dv: wp.vec3,
    damp: float,
    v_limit: float,
    t: float,
    clear: int,
    grid_v: wp.array(dtype=wp.vec3),
):
    """Node velocity = momentum / mass + body forces, then anchors (fixed: full-grid node mask)
    and boundaries; one thread per node of the box.

    Speeds are capped at v_limit (one cell per substep): it never binds while the CFL bound
    holds, and keeps material from jumping cells when max_substeps_per_frame cut the substeps.
    clear != 0 also zeroes grid_mv for the next substep (forward path only)."""
    idx = wp.tid()
    mv = grid_mv[idx]
    m = mv[3]
    vel = wp.vec3(0.0)
    # A node reached only by the far tail of a B-spline can hold a denormal mass (w^3 ~ 1e-43): its
    # velocity is meaningless and the adjoint of mv / m (m^2 underflows to 0) would be NaN.
    if m > MIN_NODE_MASS:
        vel = (wp.vec3(mv[0], mv[1], mv[2]) / m + body_dv) * damp
        i, j, k = box_node(idx, g)
        if node_is_fixed(fixed, has_fixed, g, i, j, k):
            vel = wp.vec3(0.0)
        pos = g.origin + g.dx * wp.vec3(float(i), float(j), float(k))
        vel = apply_boundaries(vel, pos, bnd, t)
        speed = wp.length(vel)
        if speed > v_limit:
            vel = vel * (v_limit / speed)
    grid_v[idx] = vel
    if clear != 0:
        grid_mv[idx] = wp.vec4(0.0)


def g2p_impl(
    x_in: wp.array(dtype=wp.vec3),
    x_err_in: wp.array(dtype=wp.vec3),
    F_in: wp.array(dtype=wp.mat33),
    F_err_in: wp.array(dtype=wp.mat33),
    plastic_in: wp.array(dtype=float),
    material: wp.array(dtype=wp.int32),
    anchor: wp.array(dtype=wp.int32),
    mu: wp.array(dtype=float),
    lam: wp.array(dtype=float),
    grid_v: wp.array(dtype=wp.vec3),
    g: GridInfo,
    pp: PlasticParams,
    dt: float,
    substep: int,
    x_out: wp.array(dtype=wp.vec3),
    x_err_out: wp.array(dtype=wp.vec3),
    v_out: wp.array(dtype=wp.vec3),
    C_out: wp.array(dtype=wp.mat33),
    F_out: wp.array(dtype=wp.mat33),
    F_err_out: wp.array(dtype=wp.mat33),
    plastic_out: wp.array(dtype=float),
    bad: wp.array(dtype=wp.int32),
):
    """Gather velocity and affine matrix, update F with the return mapping, advect and clamp.
    The *_in and *_out arrays may alias (each thread touches only its own particle)."""
    p = wp.tid()
    xp = x_in[p]
    bx, by, bz, fx = stencil_base(xp, g)
    w = bspline_weights(fx)
    # APIC: C = 4/dx^2 sum w v (x_node - x_p)^T; accumulate sum w v * offset per axis (s0, s1, s2)
    # and subtract v fx^T once, instead of an outer product per node.
    new_v = wp.vec3(0.0)
    s0 = wp.vec3(0.0)
    s1 = wp.vec3(0.0)
    s2 = wp.vec3(0.0)
    ny = g.box_dims[1]
    nz = g.box_dims[2]
    for i in range(3):
        for j in range(3):
            row = ((bx + i) * ny + by + j) * nz + bz
            r0 = w[0, 2] * grid_v[row]
            r1 = w[1, 2] * grid_v[row + 1]
            r2 = w[2, 2] * grid_v[row + 2]
            wij = w[i, 0] * w[j, 1]
            r = wij * (r0 + r1 + r2)
            new_v += r
            s0 += float(i) * r
            s1 += float(j) * r
            s2 += wij * (r1 + 2.0 * r2)
    new_c = (4.0 * g.inv_dx) * (wp.matrix_from_cols(s0, s1, s2) - wp.outer(new_v, fx))
    f_new, f_err, pl_new = update_F(F_in[p], F_err_in[p], new_c, material[p], plastic_in[p], mu[p], lam[p], pp, dt)
    x_new = xp
    x_err = wp.vec3(0.0)
    if anchor[p] != 0:
        # Held in place; F still follows the free nodes in its stencil (the clamp's elastic
        # response), without drift now that the update is compensated.
        new_v = wp.vec3(0.0)
    else:
        # Compensated (Kahan) advection: keep what float32 x drops, so creep slower than
        # ulp(x) / dt still moves the particle.
        step = dt * new_v + x_err_in[p]
        x_sum = xp + step
        x_err = step - (x_sum - xp)
        x_new = wp.min(wp.max(x_sum, g.x_lo), g.x_hi)
        if wp.length_sq(x_new - x_sum) > 0.0:
            x_err = wp.vec3(0.0)
    x_out[p] = x_new
    x_err_out[p] = x_err
    v_out[p] = new_v
    C_out[p] = new_c
    F_out[p] = f_new
    F_err_out[p] = f_err
    plastic_out[p] = pl_new
    if not (wp.isfinite(new_v) and wp.isfinite(f_new) and wp.isfinite(new_c)):
        wp.atomic_min(bad, 0, substep)


p2g = wp.kernel(p2g_impl)
grid_update = wp.kernel(grid_update_impl)
g2p = wp.kernel(g2p_impl)


@wp.kernel
def material_from_params(
    log_E: wp.array(dtype=float),
    nu: wp.array(dtype=float),
    rho: wp.array(dtype=float),
    vol: wp.array(dtype=float),
    mu: wp.array(dtype=float),
    lam: wp.array(dtype=float),
    mass: wp.array(dtype=float),
):
    """Lame parameters (Pa) and mass (kg) from log Young's modulus, Poisson ratio, density."""
    p = wp.tid()
    E = wp.exp(log_E[p])
    n = nu[p]
    mu[p] = E / (2.0 * (1.0 + n))
    lam[p] = E * n / ((1.0 + n) * (1.0 - 2.0 * n))
    mass[p] = rho[p] * vol[p]


@wp.kernel
def covariance(F: wp.array(dtype=wp.mat33), cov0: wp.array(dtype=wp.mat33), cov: wp.array(dtype=wp.mat33)):
    """Deformed splat covariance F Sigma0 F^T (m^2)."""
    p = wp.tid()
    f = F[p]
    cov[p] = f @ cov0[p] @ wp.transpose(f)
