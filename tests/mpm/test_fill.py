"""Interior filling from splat opacity: ray parity with a 6-direction vote."""

from __future__ import annotations

import time

import numpy as np
import pytest

from backend.mpm import fill_interior


def sphere_shell(n, radius=0.5, centre=(0.2, -0.1, 1.0), seed=0, hole=None):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    if hole is not None:  # remove a cap around +z
        d = d[d[:, 2] < np.cos(hole)]
    pos = np.asarray(centre) + radius * d
    m = len(pos)
    scales = np.full((m, 3), 0.02)
    rots = np.tile([1.0, 0, 0, 0], (m, 1))
    return pos, scales, rots, np.full(m, 0.9)


def test_sphere_shell_is_filled_inside_only():
    pos, sc, rot, op = sphere_shell(20000)
    fill, info = fill_interior(pos, sc, rot, op, n_grid_fill=48, max_particles=100000)
    r = np.linalg.norm(fill - np.array([0.2, -0.1, 1.0]), axis=1)
    assert len(fill) > 0 and r.max() < 0.5
    h = info["cell_size"]
    # the filled cells make up the ball inside the surface layer
    inner_volume = 4 / 3 * np.pi * (0.5 - 2 * h) ** 3
    assert len(fill) * h ** 3 == pytest.approx(inner_volume, rel=0.25)
    assert info["is_fill"].sum() == len(fill) and (~info["is_fill"]).sum() == len(pos)
    assert not info["truncated"]


def test_holes_in_the_surface_are_outvoted():
    pos, sc, rot, op = sphere_shell(20000, hole=0.35)
    fill, info = fill_interior(pos, sc, rot, op, n_grid_fill=48, max_particles=100000)
    d = fill - np.array([0.2, -0.1, 1.0])
    r = np.linalg.norm(d, axis=1)
    spill = r > 0.5
    assert r.max() < 0.5 + 3 * info["cell_size"]  # a thin lid at most, and only across the hole
    assert (spill.mean() < 0.02) and (d[spill, 2] / r[spill] > np.cos(0.35 + 0.1)).all()
    full, _ = fill_interior(*sphere_shell(20000), n_grid_fill=48, max_particles=100000)
    assert len(fill) > 0.8 * len(full)


def test_particle_cap_spacing_and_logit_inputs():
    pos, sc, rot, op = sphere_shell(5000)
    logit = np.log(op / (1 - op))
    fill, info = fill_interior(pos, np.log(sc), rot, logit, n_grid_fill=40, max_particles=500,
                               scales_are_log=True, opacities_are_logits=True)
    assert len(fill) == 500 and info["truncated"]
    lattice_fill, _ = fill_interior(pos, sc, rot, op, n_grid_fill=40, max_particles=10 ** 6, spacing=0.05)
    assert len(lattice_fill) == pytest.approx(4 / 3 * np.pi * 0.45 ** 3 / 0.05 ** 3, rel=0.3)


def test_open_surface_is_not_filled():
    rng = np.random.default_rng(1)
    n = 20000
    pos = np.c_[rng.uniform(-1, 1, (n, 2)), np.zeros(n)]  # a flat sheet
    fill, _ = fill_interior(pos, np.full((n, 3), 0.02), np.tile([1.0, 0, 0, 0], (n, 1)), np.ones(n),
                            n_grid_fill=40, max_particles=1000)
    assert len(fill) == 0


def test_runtime_is_bounded_and_bad_input_is_rejected():
    pos, sc, rot, op = sphere_shell(100000)
    t0 = time.perf_counter()
    fill, info = fill_interior(pos, sc, rot, op, n_grid_fill=96, max_particles=200000)
    assert time.perf_counter() - t0 < 60  # generous: vectorised, far from a hang
    assert len(fill) > 1000
    with pytest.raises(ValueError, match="rotations"):
        fill_interior(pos, sc, rot[:, :3], op)
    with pytest.raises(ValueError, match="n_grid_fill"):
        fill_interior(pos, sc, rot, op, n_grid_fill=2)
