"""Grid boundary conditions (walls, ground, moving box colliders) and particle pokes.

Each boundary acts on grid node velocities (m/s) with a contact normal n pointing into the free
region: sticky sets the velocity (relative to the boundary) to zero; slip removes the inward
normal part and keeps the tangential part; frictional is Coulomb: remove the inward normal part
v_n < 0 and reduce the tangential speed by mu |v_n|, clamped at zero. Nodes moving away
(v_n >= 0) are left alone by slip and frictional boundaries.
"""

from __future__ import annotations

import numpy as np
import warp as wp

from ..protocol import BOUNDARY_KINDS
from .config import SimConfig

# The kernels' ids of protocol.BOUNDARY_KINDS (the index of each name there).
STICKY = wp.constant(BOUNDARY_KINDS.index("sticky"))
SLIP = wp.constant(BOUNDARY_KINDS.index("slip"))
FRICTIONAL = wp.constant(BOUNDARY_KINDS.index("frictional"))


def kind_id(kind: str) -> int:
    return BOUNDARY_KINDS.index(kind)


@wp.struct
class Boundaries:
    """Walls on the domain AABB faces, an optional ground plane and kinematic boxes (metres,
    domain-local: world minus the grid origin)."""

    dom_min: wp.vec3
    dom_max: wp.vec3
    wall_kind: int
    wall_friction: float
    ground_on: int
    ground_height: float
    ground_kind: int
    ground_friction: float
    n_colliders: int
    col_offset: wp.array(dtype=wp.int32)
    col_count: wp.array(dtype=wp.int32)
    col_times: wp.array(dtype=float)
    col_centers: wp.array(dtype=wp.vec3)
    col_half: wp.array(dtype=wp.vec3)
    col_kind: wp.array(dtype=wp.int32)
    col_friction: wp.array(dtype=float)


@wp.struct
class Pokes:
    """Spheres that accelerate the particles inside them during [start, end) seconds."""

    n: int
    center: wp.array(dtype=wp.vec3)
    radius: wp.array(dtype=float)
    accel: wp.array(dtype=wp.vec3)
    start: wp.array(dtype=float)
    end: wp.array(dtype=float)


@wp.func(inline=True)
def contact_response(v: wp.vec3, n: wp.vec3, kind: int, friction: float) -> wp.vec3:
    """Velocity after contact with a boundary of normal n (unit, into the free region)."""
    if kind == STICKY:
        return wp.vec3(0.0)
    vn = wp.dot(v, n)
    if vn >= 0.0:
        return v
    vt = v - vn * n
    if kind == SLIP:
        return vt
    vt_len = wp.length(vt)
    if vt_len <= -friction * vn:
        return wp.vec3(0.0)
    return vt * (1.0 + friction * vn / vt_len)


@wp.func(inline=True)
def contact_jacobian(v: wp.vec3, n: wp.vec3, kind: int, friction: float) -> wp.mat33:
    """d contact_response(v, n, kind, friction) / d v, branch for branch. In the frictional slide
    out = vt (1 + f vn / |vt|), so d out = s P dv + f / |vt| vt n^T dv - f vn / |vt|^3 vt vt^T dv
    with s = 1 + f vn / |vt| and P = I - n n^T the tangential projector."""
    if kind == STICKY:
        return wp.mat33(0.0)
    vn = wp.dot(v, n)
    if vn >= 0.0:
        return wp.identity(n=3, dtype=float)
    P = wp.identity(n=3, dtype=float) - wp.outer(n, n)
    if kind == SLIP:
        return P
    vt = v - vn * n
    vt_len = wp.length(vt)
    if vt_len <= -friction * vn:
        return wp.mat33(0.0)
    return ((1.0 + friction * vn / vt_len) * P + (friction / vt_len) * wp.outer(vt, n)
            - (friction * vn / (vt_len * vt_len * vt_len)) * wp.outer(vt, vt))


@wp.func(inline=True)
def collider_motion(b: Boundaries, c: int, t: float):
    """Centre (m) and velocity (m/s) of collider c at time t: piecewise-linear keyframes."""
    off = b.col_offset[c]
    cnt = b.col_count[c]
    if cnt == 1 or t <= b.col_times[off]:
        return b.col_centers[off], wp.vec3(0.0)
    last = off + cnt - 1
    if t >= b.col_times[last]:
        return b.col_centers[last], wp.vec3(0.0)
    k = off
    while k < last - 1 and b.col_times[k + 1] <= t:
        k += 1
    span = b.col_times[k + 1] - b.col_times[k]
    vel = (b.col_centers[k + 1] - b.col_centers[k]) / span
    return b.col_centers[k] + (t - b.col_times[k]) * vel, vel


@wp.func(inline=True)
def collider_contact(pos: wp.vec3, b: Boundaries, c: int, t: float):
    """Whether collider c holds the node at pos at time t; if so the contact normal (out through the face of
    the smallest penetration) and the collider's velocity."""
    center, vel = collider_motion(b, c, t)
    d = pos - center
    h = b.col_half[c]
    n = wp.vec3(0.0)
    inside = wp.abs(d[0]) < h[0] and wp.abs(d[1]) < h[1] and wp.abs(d[2]) < h[2]
    if inside:
        pen = wp.vec3(h[0] - wp.abs(d[0]), h[1] - wp.abs(d[1]), h[2] - wp.abs(d[2]))
        axis = int(0)
        if pen[1] < pen[axis]:
            axis = 1
        if pen[2] < pen[axis]:
            axis = 2
        n[axis] = wp.sign(d[axis])
        if d[axis] == 0.0:
            n[axis] = 1.0
    return inside, n, vel


@wp.func(inline=True)
def apply_boundaries(v: wp.vec3, pos: wp.vec3, b: Boundaries, t: float) -> wp.vec3:
    """Apply walls, ground and colliders to the velocity v of the grid node at (domain-local) position pos."""
    out = v
    for a in range(3):
        if pos[a] <= b.dom_min[a]:
            n = wp.vec3(0.0)
            n[a] = 1.0
            out = contact_response(out, n, b.wall_kind, b.wall_friction)
        if pos[a] >= b.dom_max[a]:
            n = wp.vec3(0.0)
            n[a] = -1.0
            out = contact_response(out, n, b.wall_kind, b.wall_friction)
    if b.ground_on != 0 and pos[2] <= b.ground_height:
        out = contact_response(out, wp.vec3(0.0, 0.0, 1.0), b.ground_kind, b.ground_friction)
    for c in range(b.n_colliders):
        inside, n, vel = collider_contact(pos, b, c, t)
        if inside:
            out = contact_response(out - vel, n, b.col_kind[c], b.col_friction[c]) + vel
    return out


@wp.func(inline=True)
def within_boundaries(pos: wp.vec3, b: Boundaries, t: float) -> bool:
    """Whether no boundary acts at pos at time t: inside the walls, above the ground, in no collider
    (the hand-written grid-update adjoint skips the Jacobian there)."""
    inside = not (b.ground_on != 0 and pos[2] <= b.ground_height)
    for a in range(3):
        if pos[a] <= b.dom_min[a] or pos[a] >= b.dom_max[a]:
            inside = False
    for c in range(b.n_colliders):
        held, n, vel = collider_contact(pos, b, c, t)
        if held:
            inside = False
    return inside


@wp.func(inline=True)
def boundary_response(v: wp.vec3, pos: wp.vec3, b: Boundaries, t: float):
    """apply_boundaries and its Jacobian d out / d v, for the hand-written grid-update adjoint. The same
    walk, in the same order (tests/mpm/test_grid_adjoint.py holds the two together): tracking the
    Jacobian in apply_boundaries itself would cost the forward grid update a third more (3x with
    colliders), and a node away from every boundary (within_boundaries) needs neither."""
    out = v
    jac = wp.identity(n=3, dtype=float)
    for a in range(3):
        if pos[a] <= b.dom_min[a]:
            n = wp.vec3(0.0)
            n[a] = 1.0
            jac = contact_jacobian(out, n, b.wall_kind, b.wall_friction) @ jac
            out = contact_response(out, n, b.wall_kind, b.wall_friction)
        if pos[a] >= b.dom_max[a]:
            n = wp.vec3(0.0)
            n[a] = -1.0
            jac = contact_jacobian(out, n, b.wall_kind, b.wall_friction) @ jac
            out = contact_response(out, n, b.wall_kind, b.wall_friction)
    if b.ground_on != 0 and pos[2] <= b.ground_height:
        up = wp.vec3(0.0, 0.0, 1.0)
        jac = contact_jacobian(out, up, b.ground_kind, b.ground_friction) @ jac
        out = contact_response(out, up, b.ground_kind, b.ground_friction)
    for c in range(b.n_colliders):
        inside, n, vel = collider_contact(pos, b, c, t)
        if inside:
            jac = contact_jacobian(out - vel, n, b.col_kind[c], b.col_friction[c]) @ jac
            out = contact_response(out - vel, n, b.col_kind[c], b.col_friction[c]) + vel
    return out, jac


@wp.func(inline=True)
def poke_velocity_change(x: wp.vec3, pk: Pokes, t: float, dt: float) -> wp.vec3:
    """Velocity change over one substep from the pokes active at time t."""
    dv = wp.vec3(0.0)
    for i in range(pk.n):
        if t >= pk.start[i] and t < pk.end[i]:
            if wp.length(x - pk.center[i]) < pk.radius[i]:
                dv += dt * pk.accel[i]
    return dv


def build_boundaries(config: SimConfig, dom_min: np.ndarray, dom_max: np.ndarray, device: str,
                     origin=(0.0, 0.0, 0.0)) -> Boundaries:
    """Pack the config's walls, ground and colliders (world units) into a warp struct on `device`,
    shifted into the solver's domain-local frame (world - origin)."""
    origin = np.asarray(origin, np.float64)
    b = Boundaries()
    b.dom_min = wp.vec3(*map(float, np.asarray(dom_min, np.float64) - origin))
    b.dom_max = wp.vec3(*map(float, np.asarray(dom_max, np.float64) - origin))
    b.wall_kind = kind_id(config.walls.kind)
    b.wall_friction = float(config.walls.friction)
    g = config.ground
    b.ground_on = int(g is not None)
    b.ground_height = float(g.height - origin[2]) if g else 0.0
    b.ground_kind = kind_id(g.kind) if g else 0
    b.ground_friction = float(g.friction) if g else 0.0
    cols = config.colliders
    b.n_colliders = len(cols)
    counts = [len(c.times) for c in cols] or [1]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
    times = np.concatenate([np.asarray(c.times, np.float32) for c in cols]) if cols else np.zeros(1, np.float32)
    centers = (np.concatenate([np.asarray(c.centers, np.float64) - origin for c in cols]).astype(np.float32)
               if cols else np.zeros((1, 3), np.float32))
    half = np.asarray([c.half_extents for c in cols], np.float32).reshape(-1, 3) if cols else np.ones((1, 3), np.float32)
    b.col_offset = wp.array(offsets, dtype=wp.int32, device=device)
    b.col_count = wp.array(np.asarray(counts, np.int32), dtype=wp.int32, device=device)
    b.col_times = wp.array(times, dtype=float, device=device)
    b.col_centers = wp.array(centers, dtype=wp.vec3, device=device)
    b.col_half = wp.array(half, dtype=wp.vec3, device=device)
    b.col_kind = wp.array(np.asarray([kind_id(c.kind) for c in cols] or [0], np.int32), dtype=wp.int32, device=device)
    b.col_friction = wp.array(np.asarray([c.friction for c in cols] or [0.0], np.float32), dtype=float, device=device)
    return b


def build_pokes(config: SimConfig, device: str, origin=(0.0, 0.0, 0.0)) -> Pokes:
    """Pack the config's pokes (acceleration = strength * normalised direction), centres shifted
    into the domain-local frame (world - origin)."""
    pk = Pokes()
    pokes = config.pokes
    pk.n = len(pokes)
    if pokes:
        dirs = np.asarray([p.direction for p in pokes], np.float64)
        accel = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * np.asarray([p.strength for p in pokes])[:, None]
        center = (np.asarray([p.center for p in pokes], np.float64) - np.asarray(origin, np.float64)).astype(np.float32)
        radius = np.asarray([p.radius for p in pokes], np.float32)
        start = np.asarray([p.start for p in pokes], np.float32)
        end = np.asarray([np.finfo(np.float32).max if p.end is None else p.end for p in pokes], np.float32)
    else:
        accel, center = np.zeros((1, 3)), np.zeros((1, 3), np.float32)
        radius, start, end = (np.zeros(1, np.float32) for _ in range(3))
    pk.center = wp.array(center, dtype=wp.vec3, device=device)
    pk.radius = wp.array(radius, dtype=float, device=device)
    pk.accel = wp.array(accel.astype(np.float32), dtype=wp.vec3, device=device)
    pk.start = wp.array(start, dtype=float, device=device)
    pk.end = wp.array(end, dtype=float, device=device)
    return pk


def body_acceleration(config: SimConfig, t: float) -> np.ndarray:
    """Uniform acceleration (gravity + winds) at time t, m/s^2."""
    acc = np.asarray(config.gravity, dtype=np.float64).copy()
    for w in config.winds:
        acc += w.acceleration(t)
    return acc
