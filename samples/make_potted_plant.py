"""Generate the bundled sample: a flowering pot plant made of 3D Gaussian splats.

    python samples/make_potted_plant.py [--out DIR] [--seed N]

Writes potted_plant.ply (binary 3DGS PLY, SH degree 1, with normals) and
potted_plant_regions.json (contiguous index ranges per region, the hidden "true" material of
each region that the demo tries to recover, a suggested camera and a suggested poke).

Everything is in Blender world units: metres, Z up, the pot standing on z = 0. Each splat is
a flat disc lying in its surface: rot_0..3 (wxyz) maps the local axes (along, across,
normal) to the surface frame, and scale_2 (along the normal) is much smaller than the other
two. numpy only and seeded, so the same seed gives the same bytes on the same platform.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run as a script from anywhere: find backend.io

from backend.io.atomic import atomic_path  # noqa: E402
from backend.io.ply import SH_C0, Splats, write_splats  # noqa: E402

SEED = 20241120
PLY_NAME = "potted_plant.ply"
REGIONS_NAME = "potted_plant_regions.json"

# ---- dimensions (metres) ----------------------------------------------------------------
POT_BASE_R, POT_WALL_TOP_R = 0.048, 0.060  # tapered outer wall
RIM_Z0, RIM_Z1, RIM_R = 0.100, 0.122, 0.066  # thick rolled rim, as on a terracotta pot
INNER_R = 0.057
SOIL_Z = 0.104
STEM_LENGTH = 0.25
# base / top radius: a sturdy stem, close to a grid cell across at the demo's n_grid 24
STEM_R0, STEM_R1 = 0.0080, 0.0060
LEAF_AT = (0.30, 0.44, 0.57, 0.69, 0.80)  # position along the stem (0 = soil, 1 = top)
LEAF_LENGTH = (0.110, 0.105, 0.095, 0.085, 0.072)
LEAF_WIDTH = (0.046, 0.044, 0.040, 0.035, 0.030)
PETALS, PETAL_LENGTH, PETAL_WIDTH = 11, 0.034, 0.013
FLOWER_CENTRE_R = 0.010
FLOWER_TILT_DEG = 40.0  # the flower head turns towards the suggested camera
CAMERA_AZIMUTH_DEG, CAMERA_ELEVATION_DEG = -65.0, 18.0

# ---- the hidden "true" materials the demo should recover --------------------------------
# Stiff enough to stand under gravity, as a real plant does: the stem carries the leaves and the flower, which
# hangs to one side, so it holds a bending load (with this stem at 1e6 Pa the plant falls over; at 3e6 Pa it
# sags 5% of its height when released from F = I, which the backend's rest state then holds). Leaves softer
# than 1e6 Pa droop into slow modes that make the rest state several times slower to find. Still about 10x
# softer than a woody stem, which keeps the CPU demo at hundreds of substeps per frame instead of thousands (the
# substep follows the wave speed sqrt(E / rho)). The motion depends on E / rho and the scene's scale, so
# recovering these is the same problem at any stiffness.
MATERIALS = {
    "pot": {"anchored": True, "youngs_modulus": 1.0e8, "poisson_ratio": 0.25, "density": 1900.0},
    "soil": {"anchored": True, "youngs_modulus": 1.0e6, "poisson_ratio": 0.30, "density": 1300.0},
    "stem": {"anchored": False, "youngs_modulus": 3.0e6, "poisson_ratio": 0.35, "density": 700.0},
    "leaves": {"anchored": False, "youngs_modulus": 1.0e6, "poisson_ratio": 0.30, "density": 500.0},
    "flower": {"anchored": False, "youngs_modulus": 3.0e5, "poisson_ratio": 0.30, "density": 400.0},
}


# ==========================================================================================
# Geometry helpers
# ==========================================================================================

def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _quat_from_frames(t: np.ndarray, n: np.ndarray) -> np.ndarray:
    """wxyz quaternions of the rotations whose columns are (t, n x t, n): local x along the
    surface direction t, local z along the normal n (t is re-orthogonalised against n)."""
    n = _unit(n)
    t = _unit(t - np.sum(t * n, axis=-1, keepdims=True) * n)
    b = np.cross(n, t)
    m = np.stack([t, b, n], axis=-1)  # (N, 3, 3), columns are the local axes
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    candidates = np.stack([m00 + m11 + m22, m00, m11, m22], axis=1)
    case = np.argmax(candidates, axis=1)
    q = np.empty((len(m), 4))
    # Shepperd's method: divide by the largest of the four to stay well conditioned.
    s = np.sqrt(np.maximum(1.0 + np.choose(case, [m00 + m11 + m22, m00 - m11 - m22,
                                                  m11 - m00 - m22, m22 - m00 - m11]), 1e-12)) * 2
    d21, d02, d10 = m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1]
    s01, s02, s12 = m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1]
    q[:, 0] = np.choose(case, [0.25 * s, d21 / s, d02 / s, d10 / s])
    q[:, 1] = np.choose(case, [d21 / s, 0.25 * s, s01 / s, s02 / s])
    q[:, 2] = np.choose(case, [d02 / s, s01 / s, 0.25 * s, s12 / s])
    q[:, 3] = np.choose(case, [d10 / s, s02 / s, s12 / s, 0.25 * s])
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)  # w >= 0
    return _unit(q)


class _Part:
    """Splats of one surface patch, in float64 until the end."""

    def __init__(self, pos, tangent, normal, size_t, size_b, rgb, opacity, thickness):
        self.pos = pos
        self.normal = _unit(normal)
        self.rot = _quat_from_frames(tangent, normal)
        n = len(pos)
        # A disc of Gaussians with sigma ~0.6 x spacing overlaps into a closed surface.
        self.scale = np.log(np.stack([0.6 * np.broadcast_to(size_t, (n,)),
                                      0.6 * np.broadcast_to(size_b, (n,)),
                                      np.broadcast_to(thickness, (n,))], axis=1))
        self.rgb = np.clip(rgb, 0.0, 1.0)
        self.opacity = np.broadcast_to(opacity, (n,))


def _jitter(rng, shape, amount):
    return (rng.random(shape) - 0.5) * amount


def _surface_of_revolution(rng, z0, z1, radius_at, spacing, outward=True):
    """Splats on r = radius_at(z) for z in [z0, z1] (a wall of the pot)."""
    rows = max(2, int(round((z1 - z0) / spacing)))
    r_mid = radius_at(0.5 * (z0 + z1))
    cols = max(8, int(round(2 * math.pi * r_mid / spacing)))
    zi, ci = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    z = z0 + (zi.ravel() + 0.5 + _jitter(rng, zi.size, 0.5)) * (z1 - z0) / rows
    phi = (ci.ravel() + 0.5 * (zi.ravel() % 2) + _jitter(rng, zi.size, 0.5)) * 2 * math.pi / cols
    r = radius_at(z)
    slope = (radius_at(z + 1e-4) - radius_at(z - 1e-4)) / 2e-4  # dr/dz
    radial = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(phi)], axis=1)
    around = np.stack([-np.sin(phi), np.cos(phi), np.zeros_like(phi)], axis=1)
    pos = radial * r[:, None] + np.stack([0 * z, 0 * z, z], axis=1)
    normal = radial - slope[:, None] * np.array([0.0, 0.0, 1.0])
    normal = _unit(normal) if outward else -_unit(normal)
    return pos, around, normal, 2 * math.pi * r / cols, (z1 - z0) / rows


def _annulus(rng, z, r0, r1, spacing, up=True):
    """Splats on a flat ring at height z between radii r0 < r1 (rim top/underside, soil)."""
    pos, tangents, sizes = [], [], []
    rings = max(1, int(round((r1 - r0) / spacing)))
    dr = (r1 - r0) / rings
    for k in range(rings):
        r = r0 + (k + 0.5) * dr
        cols = max(6, int(round(2 * math.pi * r / spacing)))
        phi = (np.arange(cols) + rng.random() + _jitter(rng, cols, 0.4)) * 2 * math.pi / cols
        rr = r + _jitter(rng, cols, 0.4 * dr)
        pos.append(np.stack([rr * np.cos(phi), rr * np.sin(phi), np.full(cols, z)], axis=1))
        tangents.append(np.stack([-np.sin(phi), np.cos(phi), np.zeros(cols)], axis=1))
        sizes.append(np.full(cols, 2 * math.pi * r / cols))
    pos, tangents, sizes = np.concatenate(pos), np.concatenate(tangents), np.concatenate(sizes)
    normal = np.tile([0.0, 0.0, 1.0 if up else -1.0], (len(pos), 1))
    return pos, tangents, normal, sizes, dr


def _colour_noise(rng, n, base, amount):
    """Per-splat brightness and slight hue variation around an RGB base colour."""
    bright = 1.0 + _jitter(rng, (n, 1), 2 * amount)
    hue = 1.0 + _jitter(rng, (n, 3), amount)
    return np.asarray(base)[None, :] * bright * hue


# ==========================================================================================
# The plant, region by region
# ==========================================================================================

def _pot(rng) -> list[_Part]:
    spacing = 0.0042
    terracotta = np.array([0.70, 0.36, 0.22])
    parts = []

    def wall_r(z):
        return POT_BASE_R + (POT_WALL_TOP_R - POT_BASE_R) * np.asarray(z) / RIM_Z0

    surfaces = [
        _surface_of_revolution(rng, 0.0, RIM_Z0, wall_r, spacing),
        _surface_of_revolution(rng, RIM_Z0, RIM_Z1, lambda z: RIM_R + 0 * np.asarray(z), spacing),
        _surface_of_revolution(rng, SOIL_Z - 0.004, RIM_Z1, lambda z: INNER_R + 0 * np.asarray(z),
                               spacing, outward=False),
    ]
    for pos, t, nrm, st, sb in surfaces:
        rgb = _colour_noise(rng, len(pos), terracotta, 0.06)
        rgb *= (0.92 + 0.08 * np.sin(pos[:, 2] * 180.0))[:, None]  # faint throwing rings
        parts.append(_Part(pos, t, nrm, st, sb, rgb, 0.97, 0.0006))
    for z, r0, r1, up in [(RIM_Z1, INNER_R, RIM_R, True), (RIM_Z0, wall_r(RIM_Z0), RIM_R, False)]:
        pos, t, nrm, st, sb = _annulus(rng, z, r0, r1, spacing, up=up)
        rgb = _colour_noise(rng, len(pos), terracotta * (1.05 if up else 0.8), 0.05)
        parts.append(_Part(pos, t, nrm, st, sb, rgb, 0.97, 0.0006))
    return parts


def _soil(rng) -> list[_Part]:
    pos, t, nrm, st, sb = _annulus(rng, SOIL_Z, 0.0, INNER_R - 0.001, 0.0040)
    r = np.hypot(pos[:, 0], pos[:, 1])
    # Lumpy surface, heaped slightly around the stem; normals follow the lumps.
    def height(x, y):
        return (0.0015 * np.sin(90 * x + 1.3) * np.sin(110 * y + 0.4)
                + 0.004 * np.exp(-(x ** 2 + y ** 2) / 0.015 ** 2))
    pos[:, 2] += height(pos[:, 0], pos[:, 1])
    e = 1e-4
    gx = (height(pos[:, 0] + e, pos[:, 1]) - height(pos[:, 0] - e, pos[:, 1])) / (2 * e)
    gy = (height(pos[:, 0], pos[:, 1] + e) - height(pos[:, 0], pos[:, 1] - e)) / (2 * e)
    nrm = _unit(np.stack([-gx, -gy, np.ones_like(gx)], axis=1))
    dark = np.array([0.22, 0.15, 0.10])
    rgb = _colour_noise(rng, len(pos), dark, 0.25)
    rgb *= (1.0 - 0.15 * (r / INNER_R))[:, None]  # darker under the rim
    return [_Part(pos, t, nrm, st * 1.3, sb * 1.3, rgb, 0.99, 0.0008)]


def _stem_curve(s: np.ndarray):
    """Centre line, unit tangent and radius of the stem at s in [0, 1] (0 = soil)."""
    s = np.asarray(s, dtype=float)
    centre = np.stack([0.018 * s ** 2, -0.006 * np.sin(math.pi * s),
                       SOIL_Z + STEM_LENGTH * s], axis=-1)
    d = np.stack([0.036 * s, -0.006 * math.pi * np.cos(math.pi * s),
                  np.full_like(s, STEM_LENGTH)], axis=-1)
    return centre, _unit(d), STEM_R0 + (STEM_R1 - STEM_R0) * s


def _stem(rng) -> list[_Part]:
    spacing = 0.0020
    rows = int(round(STEM_LENGTH / spacing))
    cols = 12
    si, ci = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    s = (si.ravel() + 0.5 + _jitter(rng, si.size, 0.4)) / rows
    phi = (ci.ravel() + 0.5 * (si.ravel() % 2) + _jitter(rng, si.size, 0.4)) * 2 * math.pi / cols
    centre, axis, radius = _stem_curve(s)
    side = _unit(np.cross(axis, [1.0, 0.0, 0.0]))  # the stem stays near vertical: x is never parallel
    side2 = np.cross(axis, side)
    normal = np.cos(phi)[:, None] * side + np.sin(phi)[:, None] * side2
    pos = centre + radius[:, None] * normal
    green = np.array([0.23, 0.42, 0.13])
    rgb = _colour_noise(rng, len(pos), green, 0.05)
    base_tint = np.clip(1.0 - s / 0.15, 0.0, 1.0)[:, None]  # woody brown near the soil
    rgb = rgb * (1 - 0.5 * base_tint) + 0.5 * base_tint * np.array([0.35, 0.25, 0.12])
    stripe = 1.0 + 0.06 * np.cos(3 * phi)[:, None]  # faint ridges along the stem
    return [_Part(pos, axis, normal, STEM_LENGTH / rows, 2 * math.pi * radius / cols,
                  rgb * stripe, 0.98, 0.0004)]


def _leaf_surface(u, v, base, heading, length, width, lift0, droop, fold):
    """Point on a leaf blade: u in [0, 1] from base to tip, v in [-1, 1] across."""
    a = droop
    theta0 = lift0
    # Midrib: the pitch turns from lift0 down by `droop` radians along the blade (closed form).
    along = length * (np.sin(theta0) - np.sin(theta0 - a * u)) / a
    rise = length * (np.cos(theta0 - a * u) - np.cos(theta0)) / a
    side = np.array([-heading[1], heading[0], 0.0])
    shape = (u ** 0.6) * (1 - u) ** 0.9 / (0.4 ** 0.6 * 0.6 ** 0.9)  # ovate, widest at 40 %
    half = 0.5 * width * shape
    pitch = theta0 - a * u
    # the midrib's normal: perpendicular to its direction, in the leaf's vertical plane
    up = -np.sin(pitch)[..., None] * heading + np.cos(pitch)[..., None] * np.array([0.0, 0.0, 1.0])
    lift = fold * np.abs(v) * half + 0.002 * np.sin(7 * math.pi * u) * v ** 2  # V-fold, wavy edge
    return (base + along[..., None] * heading + rise[..., None] * np.array([0.0, 0.0, 1.0])
            + (v * half)[..., None] * side + lift[..., None] * up)


def _leaves(rng) -> list[_Part]:
    spacing = 0.0022
    parts = []
    golden = math.radians(137.5)
    for k, (s_at, length, width) in enumerate(zip(LEAF_AT, LEAF_LENGTH, LEAF_WIDTH)):
        azimuth = 0.6 + k * golden
        heading = np.array([math.cos(azimuth), math.sin(azimuth), 0.0])
        centre, _, radius = _stem_curve(np.array([s_at]))
        base = centre[0] + heading * radius[0] * 0.8
        params = dict(base=base, heading=heading, length=length, width=width,
                      lift0=math.radians(42 + 6 * rng.random()), droop=math.radians(95 + 20 * rng.random()),
                      fold=0.25 + 0.1 * rng.random())
        rows = int(round(length / spacing))
        us, vs, du_list, dv_list = [], [], [], []
        for i in range(rows):
            u = (i + 0.5 + _jitter(rng, (), 0.3)) / rows
            half = 0.5 * width * (u ** 0.6) * (1 - u) ** 0.9 / (0.4 ** 0.6 * 0.6 ** 0.9)
            cols = max(1, int(round(2 * half / spacing)))
            v = (np.arange(cols) + 0.5 + _jitter(rng, cols, 0.4)) / cols * 2 - 1
            us.append(np.full(cols, u))
            vs.append(v)
            du_list.append(np.full(cols, length / rows))
            dv_list.append(np.full(cols, max(2 * half / cols, 0.5 * spacing)))
        u, v = np.concatenate(us), np.concatenate(vs)
        pos = _leaf_surface(u, v, **params)
        e = 1e-4
        d_u = _leaf_surface(u + e, v, **params) - _leaf_surface(u - e, v, **params)
        d_v = _leaf_surface(u, v + e, **params) - _leaf_surface(u, v - e, **params)
        normal = _unit(np.cross(d_u, d_v))
        normal *= np.where(normal[:, 2:] < 0, -1.0, 1.0)  # upper side faces up
        # Colour: a lighter midrib and lateral veins, yellower tips, per-leaf tone.
        leaf_tone = np.array([0.30, 0.56, 0.17]) * (0.9 + 0.2 * rng.random(3))
        rgb = _colour_noise(rng, len(pos), leaf_tone, 0.05)
        midrib = np.exp(-(v / 0.06) ** 2)[:, None]
        veins = (np.cos(2 * math.pi * (7 * u - 2.0 * np.abs(v))) > 0.92)[:, None] * 0.3
        light = np.array([0.55, 0.74, 0.36])
        rgb = rgb * (1 - 0.6 * midrib - veins * 0.5) + light * (0.6 * midrib + veins * 0.5)
        tip = np.clip((u - 0.85) / 0.15, 0, 1)[:, None]
        rgb = rgb * (1 - 0.3 * tip) + 0.3 * tip * np.array([0.55, 0.60, 0.20])
        opacity = 0.93 + 0.05 * rng.random(len(pos))
        parts.append(_Part(pos, d_u, normal, np.concatenate(du_list), np.concatenate(dv_list),
                           rgb, opacity, 0.0003))
    return parts


def _flower(rng) -> list[_Part]:
    top, axis, _ = _stem_curve(np.array([1.0]))
    top = top[0]
    toward = np.array([math.cos(math.radians(CAMERA_AZIMUTH_DEG)), math.sin(math.radians(CAMERA_AZIMUTH_DEG)), 0.0])
    axis = _unit(axis[0] + math.tan(math.radians(FLOWER_TILT_DEG)) * toward)
    e1 = _unit(np.cross(axis, [1.0, 0.0, 0.0]))
    e2 = np.cross(axis, e1)
    parts = []
    # Centre: a low dome of florets on top of the stem.
    spacing = 0.0015
    rings = int(round(FLOWER_CENTRE_R / spacing))
    pos, nrm, tan, sizes = [], [], [], []
    for k in range(rings):
        rho = (k + 0.5) / rings
        cols = max(5, int(round(2 * math.pi * rho * FLOWER_CENTRE_R / spacing)))
        phi = (np.arange(cols) + rng.random()) * 2 * math.pi / cols
        radial = np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2
        height = 0.004 * (1 - rho ** 2)
        pos.append(top + 0.002 * axis + rho * FLOWER_CENTRE_R * radial + height * axis)
        slope = 2 * 0.004 * rho / FLOWER_CENTRE_R
        nrm.append(_unit(axis[None, :] + slope * radial))
        tan.append(np.cross(axis, radial))
        sizes.append(np.full(cols, 2 * math.pi * rho * FLOWER_CENTRE_R / cols))
    pos, nrm, tan, sizes = map(np.concatenate, (pos, nrm, tan, sizes))
    rgb = _colour_noise(rng, len(pos), [0.85, 0.62, 0.12], 0.08)
    parts.append(_Part(pos, tan, nrm, np.maximum(sizes, spacing),
                       FLOWER_CENTRE_R / rings, rgb, 0.99, 0.00025))
    # Petals: thin blades radiating from the centre, cupped slightly upwards.
    spacing = 0.0016
    for p in range(PETALS):
        phi = 2 * math.pi * (p + 0.15 * rng.random()) / PETALS
        radial = math.cos(phi) * e1 + math.sin(phi) * e2
        side = np.cross(axis, radial)
        rows = int(round(PETAL_LENGTH / spacing))
        us, vs, dv = [], [], []
        for i in range(rows):
            u = (i + 0.5) / rows
            half = 0.5 * PETAL_WIDTH * math.sin(math.pi * min(1.0, 0.15 + 0.95 * u)) ** 0.7
            cols = max(1, int(round(2 * half / spacing)))
            us.append(np.full(cols, u))
            vs.append(((np.arange(cols) + 0.5) / cols * 2 - 1) * half)
            dv.append(np.full(cols, max(2 * half / cols, 0.5 * spacing)))
        u, w = np.concatenate(us), np.concatenate(vs)
        r = FLOWER_CENTRE_R * 0.8 + u * PETAL_LENGTH
        cup = 0.25 * (u * PETAL_LENGTH) + 0.004 * (w / (0.5 * PETAL_WIDTH)) ** 2
        pos = top + r[:, None] * radial + w[:, None] * side + cup[:, None] * axis
        slope = 0.25
        nrm = _unit(np.tile(axis - slope * radial, (len(u), 1))
                    - (0.008 * w / (0.5 * PETAL_WIDTH) ** 2)[:, None] * side)
        pink = np.array([0.88, 0.32, 0.52])
        rgb = _colour_noise(rng, len(u), pink, 0.05)
        base_glow = np.clip(1 - u / 0.25, 0, 1)[:, None]  # pale yellow throat
        rgb = rgb * (1 - 0.6 * base_glow) + 0.6 * base_glow * np.array([0.98, 0.85, 0.55])
        parts.append(_Part(pos, np.tile(radial, (len(u), 1)), nrm, PETAL_LENGTH / rows,
                           np.concatenate(dv), rgb, 0.9 + 0.08 * rng.random(len(u)), 0.0002))
    return parts


# ==========================================================================================
# Assembly
# ==========================================================================================

def _merge(parts: list[_Part]) -> dict:
    return {key: np.concatenate([getattr(p, key) for p in parts]) for key in
            ("pos", "normal", "rot", "scale", "rgb", "opacity")}


def _rounded(v) -> list[float]:
    return [round(float(x), 4) + 0.0 for x in v]  # + 0.0 turns -0.0 into 0.0


def _camera_and_poke(positions: np.ndarray) -> tuple[dict, dict]:
    lo, hi = positions.min(0), positions.max(0)
    target = np.array([0.0, 0.0, 0.5 * (lo[2] + hi[2])])
    radius = float(np.linalg.norm(positions - target, axis=1).max())
    lens, sensor, res = 50.0, 36.0, (1024, 576)
    # Blender's AUTO sensor fit puts the sensor width on the longer image side.
    half_fov = math.atan(0.5 * sensor * min(res) / max(res) / lens)
    distance = 1.05 * radius / math.sin(half_fov)
    azimuth, elevation = math.radians(CAMERA_AZIMUTH_DEG), math.radians(CAMERA_ELEVATION_DEG)
    view = np.array([math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
                     math.sin(elevation)])
    location = target + distance * view
    camera = {
        "location": _rounded(location),
        "target": _rounded(target),
        "up": [0.0, 0.0, 1.0],
        "lens_mm": lens, "sensor_width_mm": sensor, "sensor_fit": "AUTO",
        "resolution": list(res), "clip_start": 0.01, "clip_end": 10.0,
    }
    # Push the top of the stem sideways as seen from the camera, so the sway is in view.
    top, _, _ = _stem_curve(np.array([0.92]))
    sideways = np.cross([0.0, 0.0, 1.0], view)
    sideways /= np.linalg.norm(sideways)
    poke = {
        "description": "a short sideways push on the upper stem below the flower",
        "centre": _rounded(top[0]),
        "half_size": [0.015, 0.015, 0.015],
        "direction": _rounded(sideways),
        "speed_m_s": 0.6,
        "start_s": 0.0,
        "end_s": 0.03,
    }
    return camera, poke


def build(seed: int = SEED) -> tuple[Splats, dict]:
    """The plant as Splats plus the regions description (ready for JSON)."""
    rng = np.random.default_rng(seed)
    regions = [("pot", _pot), ("soil", _soil), ("stem", _stem), ("leaves", _leaves), ("flower", _flower)]
    merged, info, start = [], {}, 0
    for name, make in regions:
        m = _merge(make(rng))
        stop = start + len(m["pos"])
        info[name] = {
            "ranges": [[start, stop]],
            "count": stop - start,
            "bbox_min": _rounded(m["pos"].min(0)),
            "bbox_max": _rounded(m["pos"].max(0)),
            "material": MATERIALS[name],
        }
        merged.append(m)
        start = stop
    all_ = {key: np.concatenate([m[key] for m in merged]) for key in merged[0]}
    n = len(all_["pos"])
    # SH degree 1 (channel-major): a faint view-dependent sheen, brighter when seen from above.
    f_rest = np.zeros((n, 9))
    f_rest[:, [1, 4, 7]] = 0.06  # the z coefficient of R, G, B
    f_rest += _jitter(rng, f_rest.shape, 0.02)
    opacity = np.clip(all_["opacity"], 0.02, 0.995)
    splats = Splats(
        positions=all_["pos"], normals=all_["normal"],
        f_dc=(all_["rgb"] - 0.5) / SH_C0, f_rest=f_rest,
        opacity=np.log(opacity / (1 - opacity)), scale=all_["scale"], rotation=all_["rot"],
        comments=[f"potted plant sample, samples/make_potted_plant.py seed={seed}",
                  "units metres, Z up, standing on z=0"])
    camera, poke = _camera_and_poke(splats.positions.astype(np.float64))
    pos = splats.positions
    description = {
        "format": "potted_plant_regions/1",
        "ply": PLY_NAME,
        "seed": seed,
        "splat_count": n,
        "sh_degree": 1,
        "units": {"length": "m", "youngs_modulus": "Pa", "density": "kg/m^3", "time": "s"},
        "up_axis": "Z",
        "ranges_note": "half-open [start, stop) splat index ranges; every splat is in exactly one region",
        "dimensions": {
            "plant_height": round(float(pos[:, 2].max()), 4),
            "pot_height": RIM_Z1, "pot_rim_diameter": 2 * RIM_R, "pot_base_diameter": 2 * POT_BASE_R,
            "soil_level": SOIL_Z, "stem_length": STEM_LENGTH, "stem_diameter": 2 * STEM_R0,
            "leaf_lengths": list(LEAF_LENGTH), "leaf_widths": list(LEAF_WIDTH),
            "flower_diameter": round(2 * (FLOWER_CENTRE_R * 0.8 + PETAL_LENGTH), 4),
        },
        "regions": info,
        "camera": camera,
        "poke": poke,
    }
    return splats, description


def write(out_dir: str = HERE, seed: int = SEED) -> tuple[str, str]:
    splats, description = build(seed)
    os.makedirs(out_dir, exist_ok=True)
    ply_path = os.path.join(out_dir, PLY_NAME)
    json_path = os.path.join(out_dir, REGIONS_NAME)
    write_splats(ply_path, splats)
    with atomic_path(json_path) as tmp, open(tmp, "x", encoding="utf-8", newline="\n") as f:
        json.dump(description, f, indent=2)
        f.write("\n")
    return ply_path, json_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=HERE, help="output folder (default: samples/)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    ply_path, json_path = write(args.out, args.seed)
    print(f"wrote {ply_path} ({os.path.getsize(ply_path)} bytes) and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
