"""Constitutive models as warp functions: Kirchhoff stress tau = P F^T (Pa) and plastic return mappings.

Elastic stress avoids the SVD where it can, both for speed (warp's svd3 costs ~0.8 us per call on
one CPU core) and for gradients (the SVD adjoint divides by s_i^2 - s_j^2, which blows up at the
rest state F = I where all singular values are equal):
- fixed-corotated: tau = 2 mu (b - V) + lambda J (J - 1) I with b = F F^T and the left stretch
  V = sqrt(b) = R F^T, computed in closed form from the invariants of b; its adjoint solves the
  Sylvester equation V X + X V = G, also in closed form (no eigenvectors, no singularity).
- StVK-Hencky: tau = mu log(b) + (lambda / 2) tr(log b) I (= 2 mu log V + lambda log J I), with
  a divided-difference adjoint for the matrix logarithm.
The plastic return mappings use the SVD when they project F (inside the yield surface F passes
through unchanged); the projection's gradient goes through warp's SVD adjoint (checked against float64
finite differences in tests/mpm/test_gradients_per_model.py). kirchhoff_stress_vjp is the hand-written
adjoint of kirchhoff_stress that the backward's P2G adjoint uses (mpm/adjoints.py); it shares the helpers
of the func_grads above.
"""

from __future__ import annotations

import warp as wp

from .config import MaterialModel
from .grid import SNOW_HARDENING_RANGE

# The kernels' ids of the material models: a particle's material_id (config.MaterialModel).
FIXED_COROTATED = wp.constant(int(MaterialModel.FIXED_COROTATED))
NEO_HOOKEAN = wp.constant(int(MaterialModel.NEO_HOOKEAN))
STVK_HENCKY = wp.constant(int(MaterialModel.STVK_HENCKY))
VON_MISES = wp.constant(int(MaterialModel.VON_MISES))
DRUCKER_PRAGER = wp.constant(int(MaterialModel.DRUCKER_PRAGER))
FOAM = wp.constant(int(MaterialModel.FOAM))
PLASTICINE = wp.constant(int(MaterialModel.PLASTICINE))
SNOW = wp.constant(int(MaterialModel.SNOW))

SNOW_H_MIN = wp.constant(SNOW_HARDENING_RANGE[0])
SNOW_H_MAX = wp.constant(SNOW_HARDENING_RANGE[1])
MIN_STRETCH = wp.constant(1.0e-4)


@wp.struct
class PlasticParams:
    """Plasticity parameters (see config.Plasticity); dp_alpha is the Drucker-Prager cone slope."""

    yield_stress: float
    hardening: float
    softening: float
    viscosity: float
    dp_alpha: float
    cohesion: float
    snow_theta_c: float
    snow_theta_s: float
    snow_xi: float


@wp.func
def sqrt_invariants(b: wp.mat33) -> wp.vec3:
    """Invariants (i1, i2, i3) of V = sqrt(b) for a symmetric positive semi-definite b.

    With the invariants I1, I2, I3 of b: i3 = sqrt(I3), i2 = (i1^2 - I1) / 2, and i1 is the largest
    root of (x^2 - I1)^2 - 4 I2 - 8 i3 x = 0, found by Newton's method from the upper bound
    sqrt(3 I1) (monotone: the quartic is convex there; the root is simple, its slope is
    8 (s0 + s1)(s1 + s2)(s2 + s0)). No trigonometry, no eigenvectors.
    """
    I1 = wp.trace(b)
    I2 = 0.5 * (I1 * I1 - wp.trace(b @ b))
    i3 = wp.sqrt(wp.max(wp.determinant(b), 0.0))
    x = wp.sqrt(3.0 * wp.max(I1, 0.0))
    for _it in range(24):
        x2 = x * x - I1
        f = x2 * x2 - 4.0 * I2 - 8.0 * i3 * x
        fp = wp.max(4.0 * x * x2 - 8.0 * i3, 1.0e-30)
        step = f / fp
        x = x - step
        if step <= 1.0e-7 * x:
            break
    return wp.vec3(x, 0.5 * (x * x - I1), i3)


@wp.func
def sym_sqrt_at(b: wp.mat33, inv: wp.vec3) -> wp.mat33:
    """V = sqrt(b) from the invariants of V (see sym_sqrt)."""
    i1 = inv[0]
    i2 = inv[1]
    i3 = inv[2]
    denom = wp.max(i1 * i2 - i3, 1.0e-30)
    return ((i1 * i1 - i2) * b - b @ b + (i1 * i3) * wp.identity(n=3, dtype=float)) / denom


@wp.func
def sym_sqrt(b: wp.mat33) -> wp.mat33:
    """Square root V of a symmetric positive semi-definite matrix b (the left stretch of F when
    b = F F^T), by Cayley-Hamilton: V = ((i1^2 - i2) b - b^2 + i1 i3 I) / (i1 i2 - i3)."""
    return sym_sqrt_at(b, sqrt_invariants(b))


@wp.func
def sym_sqrt_vjp_at(b: wp.mat33, v: wp.mat33, inv: wp.vec3, adj_v: wp.mat33) -> wp.mat33:
    """Adjoint of b for V = sqrt(b), given V and its invariants (i1, i2, i3); symmetric.

    dV solves V dV + dV V = db, so adj_b solves V X + X V = G = sym(adj_V). In V's eigenbasis
    X_ij = G_ij / (a_i + a_j), and for eigenvalues x, y of V
    1 / (x + y) = (x^2 - x y + y^2 - i1 x + i1 y + i2) / (2 (i1 y^2 + i3)),
    which gives X = (V^2 G - V G V + G V^2 - i1 V G + i1 G V + i2 G) (2 (i1 V^2 + i3 I))^-1 (V^2 = b)."""
    i1 = inv[0]
    i2 = inv[1]
    i3 = inv[2]
    ident = wp.identity(n=3, dtype=float)
    g = 0.5 * (adj_v + wp.transpose(adj_v))
    vg = v @ g
    gv = g @ v
    y = b @ g - v @ gv + g @ b - i1 * vg + i1 * gv + i2 * g
    x = y @ wp.inverse(2.0 * (i1 * b + i3 * ident))
    return 0.5 * (x + wp.transpose(x))


@wp.func_grad(sym_sqrt)
def adj_sym_sqrt(b: wp.mat33, adj_ret: wp.mat33):
    inv = sqrt_invariants(b)
    wp.adjoint[b] += sym_sqrt_vjp_at(b, sym_sqrt_at(b, inv), inv, adj_ret)


@wp.func
def sym_log(b: wp.mat33) -> wp.mat33:
    """Matrix logarithm of a symmetric positive definite matrix (eigenvalues floored at 1e-12)."""
    q = wp.mat33()
    d = wp.vec3()
    wp.eig3(0.5 * (b + wp.transpose(b)), q, d)
    lg = wp.vec3(wp.log(wp.max(d[0], 1.0e-12)), wp.log(wp.max(d[1], 1.0e-12)), wp.log(wp.max(d[2], 1.0e-12)))
    return q @ wp.diag(lg) @ wp.transpose(q)


@wp.func
def log_divided_difference(x: float, y: float) -> float:
    """(log x - log y) / (x - y), with its limit 1/x when x ~ y."""
    if wp.abs(x - y) <= 1.0e-4 * wp.max(x, y):
        return 2.0 / (x + y)
    return (wp.log(x) - wp.log(y)) / (x - y)


@wp.func
def sym_log_vjp(b: wp.mat33, adj_ret: wp.mat33) -> wp.mat33:
    """Adjoint of b for sym_log(b) (symmetric), by divided differences in b's eigenbasis."""
    q = wp.mat33()
    d = wp.vec3()
    wp.eig3(0.5 * (b + wp.transpose(b)), q, d)
    d0 = wp.max(d[0], 1.0e-12)
    d1 = wp.max(d[1], 1.0e-12)
    d2 = wp.max(d[2], 1.0e-12)
    l01 = log_divided_difference(d0, d1)
    l02 = log_divided_difference(d0, d2)
    l12 = log_divided_difference(d1, d2)
    a = wp.transpose(q) @ (0.5 * (adj_ret + wp.transpose(adj_ret))) @ q
    g = wp.mat33(
        a[0, 0] / d0, a[0, 1] * l01, a[0, 2] * l02,
        a[1, 0] * l01, a[1, 1] / d1, a[1, 2] * l12,
        a[2, 0] * l02, a[2, 1] * l12, a[2, 2] / d2,
    )
    return q @ g @ wp.transpose(q)


@wp.func_grad(sym_log)
def adj_sym_log(b: wp.mat33, adj_ret: wp.mat33):
    wp.adjoint[b] += sym_log_vjp(b, adj_ret)


@wp.func(inline=True)
def corotated_stress(F: wp.mat33, mu: float, lam: float) -> wp.mat33:
    """Fixed-corotated Kirchhoff stress 2 mu (F - R) F^T + lambda J (J - 1) I."""
    ident = wp.identity(n=3, dtype=float)
    J = wp.determinant(F)
    if J > 1.0e-3:
        b = F @ wp.transpose(F)
        return 2.0 * mu * (b - sym_sqrt(b)) + (lam * J * (J - 1.0)) * ident
    # Inverted or crushed element: R must stay a proper rotation, which the SVD with a signed last
    # singular value gives (the closed form would return the reflection, and loses precision).
    u = wp.mat33()
    s = wp.vec3()
    v = wp.mat33()
    wp.svd3(F, u, s, v)
    return 2.0 * mu * (F - u @ wp.transpose(v)) @ wp.transpose(F) + (lam * J * (J - 1.0)) * ident


@wp.func
def kirchhoff_stress(F: wp.mat33, material: int, plastic: float, mu: float, lam: float,
                     snow_xi: float) -> wp.mat33:
    """Kirchhoff stress (Pa) of the elastic part F for the particle's material model."""
    if material == FIXED_COROTATED:
        return corotated_stress(F, mu, lam)
    if material == NEO_HOOKEAN:
        J = wp.determinant(F)
        b = F @ wp.transpose(F)
        return mu * (b - wp.identity(n=3, dtype=float)) + (lam * wp.log(wp.max(J, 1.0e-6))) * wp.identity(n=3, dtype=float)
    if material == SNOW:
        # Stomakhin 2013: Lame parameters harden with plastic compression, Jp = plastic.
        h = wp.clamp(wp.exp(snow_xi * (1.0 - plastic)), SNOW_H_MIN, SNOW_H_MAX)
        return corotated_stress(F, mu * h, lam * h)
    # StVK-Hencky, also the elastic law of von Mises, Drucker-Prager, foam and plasticine.
    lg = sym_log(F @ wp.transpose(F))
    return mu * lg + (0.5 * lam * wp.trace(lg)) * wp.identity(n=3, dtype=float)


@wp.func(inline=True)
def cofactor(F: wp.mat33) -> wp.mat33:
    """d det(F) / dF (= det(F) F^-T, defined for singular F too): rows are cross products of rows."""
    r0 = wp.vec3(F[0, 0], F[0, 1], F[0, 2])
    r1 = wp.vec3(F[1, 0], F[1, 1], F[1, 2])
    r2 = wp.vec3(F[2, 0], F[2, 1], F[2, 2])
    c0 = wp.cross(r1, r2)
    c1 = wp.cross(r2, r0)
    c2 = wp.cross(r0, r1)
    return wp.mat33(c0[0], c0[1], c0[2], c1[0], c1[1], c1[2], c2[0], c2[1], c2[2])


@wp.func
def polar_rotation_vjp(u: wp.mat33, s: wp.vec3, v: wp.mat33, adj_r: wp.mat33) -> wp.mat33:
    """Adjoint of F for the rotation R = U V^T of F = U diag(s) V^T (signed s).

    With D = U^T dF V, dR = U W V^T where W_ij = (D_ij - D_ji) / (s_i + s_j), so
    adj_F = U A V^T with A_ij = (H_ij - H_ji) / (s_i + s_j), H = U^T adj_R V."""
    h = wp.transpose(u) @ adj_r @ v
    a = wp.mat33(0.0)
    for i in range(3):
        for j in range(3):
            if i != j:
                den = s[i] + s[j]
                if wp.abs(den) < 1.0e-6:
                    den = wp.where(den < 0.0, -1.0e-6, 1.0e-6)
                a[i, j] = (h[i, j] - h[j, i]) / den
    return u @ a @ wp.transpose(v)


@wp.func
def corotated_stress_vjp(F: wp.mat33, mu: float, lam: float, G: wp.mat33, tau: wp.mat33):
    """(adj_F, adj_mu, adj_lam) of corotated_stress for the stress adjoint G; tau is the stress itself,
    from which the left stretch V = b - (tau - lam J (J - 1) I) / (2 mu) is read back (no second
    square root), unless mu is too small to divide by."""
    ident = wp.identity(n=3, dtype=float)
    J = wp.determinant(F)
    tr_g = wp.trace(G)
    adj_F = (lam * (2.0 * J - 1.0) * tr_g) * cofactor(F)
    adj_lam = J * (J - 1.0) * tr_g
    adj_mu = float(0.0)
    if J > 1.0e-3:
        b = F @ wp.transpose(F)
        vs = wp.mat33()
        inv = wp.vec3()
        if mu > 1.0e-12:
            vs = b - (tau - (lam * J * (J - 1.0)) * ident) / (2.0 * mu)
            i1 = wp.trace(vs)
            inv = wp.vec3(i1, 0.5 * (i1 * i1 - wp.trace(b)), wp.sqrt(wp.max(wp.determinant(b), 0.0)))
        else:
            inv = sqrt_invariants(b)
            vs = sym_sqrt_at(b, inv)
        adj_mu = 2.0 * wp.ddot(b - vs, G)
        adj_b = (2.0 * mu) * (0.5 * (G + wp.transpose(G)) - sym_sqrt_vjp_at(b, vs, inv, G))
        adj_F = adj_F + 2.0 * adj_b @ F
    else:
        u = wp.mat33()
        s = wp.vec3()
        v = wp.mat33()
        wp.svd3(F, u, s, v)
        P = F - u @ wp.transpose(v)
        gf = G @ F
        adj_mu = 2.0 * wp.ddot(P @ wp.transpose(F), G)
        adj_F = adj_F + (2.0 * mu) * (gf + wp.transpose(G) @ P - polar_rotation_vjp(u, s, v, gf))
    return adj_F, adj_mu, adj_lam


@wp.func
def kirchhoff_stress_vjp(F: wp.mat33, material: int, plastic: float, mu: float, lam: float, snow_xi: float,
                         G: wp.mat33, tau: wp.mat33):
    """Hand-written adjoint of kirchhoff_stress for the stress adjoint G (every material model), given
    the stress tau = kirchhoff_stress(F, ...): returns (adj_F, adj_mu, adj_lam, adj_plastic). Tested
    against warp's generated adjoint."""
    ident = wp.identity(n=3, dtype=float)
    if material == FIXED_COROTATED:
        aF, amu, alam = corotated_stress_vjp(F, mu, lam, G, tau)
        return aF, amu, alam, 0.0
    if material == NEO_HOOKEAN:
        J = wp.determinant(F)
        b = F @ wp.transpose(F)
        tr_g = wp.trace(G)
        aF = (2.0 * mu) * (0.5 * (G + wp.transpose(G))) @ F
        if J > 1.0e-6:
            aF = aF + (lam * tr_g / J) * cofactor(F)
        return aF, wp.ddot(b - ident, G), wp.log(wp.max(J, 1.0e-6)) * tr_g, 0.0
    if material == SNOW:
        e = wp.exp(snow_xi * (1.0 - plastic))
        h = wp.clamp(e, SNOW_H_MIN, SNOW_H_MAX)
        aF, amu_h, alam_h = corotated_stress_vjp(F, mu * h, lam * h, G, tau)
        dh = float(0.0)
        if e > SNOW_H_MIN and e < SNOW_H_MAX:
            dh = -snow_xi * e
        return aF, amu_h * h, alam_h * h, (amu_h * mu + alam_h * lam) * dh
    b = F @ wp.transpose(F)
    lg = sym_log(b)
    tr_g = wp.trace(G)
    adj_b = sym_log_vjp(b, mu * G + (0.5 * lam * tr_g) * ident)
    return 2.0 * adj_b @ F, wp.ddot(lg, G), 0.5 * wp.trace(lg) * tr_g, 0.0


@wp.func
def compose(u: wp.mat33, s: wp.vec3, v: wp.mat33) -> wp.mat33:
    return u @ wp.diag(s) @ wp.transpose(v)


@wp.func
def return_mapping(F: wp.mat33, material: int, plastic: float, mu: float, lam: float,
                   pp: PlasticParams, dt: float):
    """Project the trial elastic F onto the yield surface; returns (F_elastic, plastic state).

    plastic is the accumulated plastic strain for von Mises / foam / plasticine / sand and the
    plastic volume ratio Jp for snow.
    """
    if material <= STVK_HENCKY:
        return F, plastic
    u = wp.mat33()
    s = wp.vec3()
    v = wp.mat33()
    wp.svd3(F, u, s, v)
    if material == SNOW:
        lo = 1.0 - pp.snow_theta_c
        hi = 1.0 + pp.snow_theta_s
        sc = wp.vec3(wp.clamp(s[0], lo, hi), wp.clamp(s[1], lo, hi), wp.clamp(s[2], lo, hi))
        if sc[0] == s[0] and sc[1] == s[1] and sc[2] == s[2]:
            return F, plastic  # inside the elastic range (see below: no SVD round trip)
        jp = plastic * (s[0] * s[1] * s[2]) / (sc[0] * sc[1] * sc[2])
        return compose(u, sc, v), wp.clamp(jp, 0.05, 20.0)
    sp = wp.vec3(wp.max(s[0], MIN_STRETCH), wp.max(s[1], MIN_STRETCH), wp.max(s[2], MIN_STRETCH))
    projected = s[0] < MIN_STRETCH or s[1] < MIN_STRETCH or s[2] < MIN_STRETCH
    eps = wp.vec3(wp.log(sp[0]), wp.log(sp[1]), wp.log(sp[2]))
    tr = eps[0] + eps[1] + eps[2]
    dev = eps - wp.vec3(tr / 3.0)
    dev_norm = wp.length(dev)
    new_plastic = plastic
    if material == DRUCKER_PRAGER:
        excess = tr - pp.cohesion
        if excess >= 0.0:
            # Expansion beyond cohesion: the grain separates, project to the cone's tip.
            new_plastic = plastic + dev_norm
            eps = wp.vec3(pp.cohesion / 3.0)
            projected = True
        else:
            dg = dev_norm + (3.0 * lam + 2.0 * mu) / (2.0 * mu) * excess * pp.dp_alpha
            if dg > 0.0 and dev_norm > 0.0:
                eps = eps - (dg / dev_norm) * dev
                new_plastic = plastic + dg
                projected = True
    else:
        ys = pp.yield_stress
        if material == VON_MISES:
            ys = ys * (1.0 + pp.hardening * plastic)
        if material == PLASTICINE:
            ys = ys / (1.0 + pp.softening * plastic)
        dg = dev_norm - ys / (2.0 * mu)
        if dg > 0.0 and dev_norm > 0.0:
            if material == FOAM:
                dg = dg / (1.0 + pp.viscosity / (2.0 * mu * dt))
            eps = eps - (dg / dev_norm) * dev
            new_plastic = plastic + dg
            projected = True
    if not projected:
        # Inside the yield surface F stays as it is: U diag(s) V^T from warp's float32 svd3 is off by up
        # to ~7e-4 (|.|_max, F within 15% of a rotation), an error a non-yielding particle would gather
        # every substep; and F's adjoint is then the identity, not the SVD adjoint (singular at s_i = s_j).
        return F, plastic
    se = wp.vec3(wp.exp(eps[0]), wp.exp(eps[1]), wp.exp(eps[2]))
    return compose(u, se, v), new_plastic
