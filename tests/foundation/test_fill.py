"""Interior filling from splat opacity: ray parity with a 6-direction vote, and closed-shell detection."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backend import protocol
from backend.geometry.fill import describe_fill, fill_interior, fill_scene

REPO = Path(__file__).resolve().parents[2]


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


def _scene(pos, scale=0.02, opacity=0.9):
    """scene.npz arrays of splats with one size and opacity (log scales, logit opacities)."""
    n = len(pos)
    return {"positions": np.asarray(pos, np.float32), "scale": np.full((n, 3), np.log(scale), np.float32),
            "rotation": np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
            "opacity": np.full(n, np.log(opacity / (1 - opacity)), np.float32)}


def test_auto_fills_a_closed_shell_and_its_nearly_closed_variant():
    for hole in (None, 0.35):  # closed; a cap of 0.35 rad missing (an opening 1/3 of the diameter)
        pos = sphere_shell(20000, hole=hole)[0]
        extra, info = fill_scene(_scene(pos), {"enabled": "auto"}, n_grid=24)
        assert info["shape"] == "shell" and info["closed_fraction"] > 0.8 and len(extra) > 10000
        assert np.linalg.norm(extra - np.array([0.2, -0.1, 1.0]), axis=1).max() < 0.5 + 3 * info["cell_size"]
        assert "Filled" in describe_fill(info)
    forced, _ = fill_scene(_scene(pos), {"enabled": True}, n_grid=24)
    assert len(forced) == len(extra)  # a shell is filled the same whether detected or forced


def test_auto_fills_a_donut_sealed_off_from_the_outside():
    """Rays grazing a thin tube miscount, but the tube's inside is unreachable from outside: a shell."""
    rng = np.random.default_rng(2)
    u, v = rng.uniform(0, 2 * np.pi, (2, 30000))
    big, small = 0.04, 0.02
    pos = np.c_[(big + small * np.cos(v)) * np.cos(u), (big + small * np.cos(v)) * np.sin(u), small * np.sin(v)]
    extra, info = fill_scene(_scene(pos, scale=0.0015), {"enabled": "auto"}, n_grid=16)
    assert info["shape"] == "shell" and len(extra) > 0
    ring = np.hypot(np.hypot(extra[:, 0], extra[:, 1]) - big, extra[:, 2])  # distance from the tube's axis
    assert ring.max() < small


def test_auto_leaves_open_surfaces_and_solids_alone():
    rng = np.random.default_rng(3)
    shell = sphere_shell(20000)[0]
    bowl = shell[shell[:, 2] < 1.0]  # the lower half: a bowl, opening up
    cup = shell[shell[:, 2] < 1.25]  # deeper: three quarters of the sphere, its opening 0.87 of the diameter
    sheet = np.c_[rng.uniform(-1, 1, (20000, 2)), np.zeros(20000)]
    ball = rng.uniform(-0.5, 0.5, (60000, 3))
    ball = ball[np.linalg.norm(ball, axis=1) < 0.5]
    for name, scene, want in (("bowl", _scene(bowl), "open"), ("cup", _scene(cup), "open"),
                              ("sheet", _scene(sheet), "solid"),
                              ("solid ball", {"positions": ball.astype(np.float32)}, "solid")):  # a plain cloud
        extra, info = fill_scene(scene, {"enabled": "auto"}, n_grid=24)
        assert (info["shape"], len(extra)) == (want, 0), name
        assert "Not filled" in describe_fill(info)
    # Forced, the bowl's cavity is filled (5 of 6 rays see its wall); off, nothing runs at all.
    assert len(fill_scene(_scene(bowl), {"enabled": True}, n_grid=24)[0]) > 1000
    extra, info = fill_scene(_scene(shell), {"enabled": False}, n_grid=24)
    assert len(extra) == 0 and info["shape"] == "off"


def test_fill_is_the_default_and_its_mode_is_validated(tmp_path):
    assert protocol.SIMULATION_DEFAULTS["fill"]["enabled"] == protocol.FILL_AUTO
    scene = {"positions": np.zeros((4, 3), np.float32)}
    for bad in ("yes", 1, None):
        protocol.write_job(tmp_path, protocol.default_job("simulate", simulation={"fill": {"enabled": bad}}), scene)
        with pytest.raises(protocol.BadJob, match="fill.enabled"):
            protocol.read_job(tmp_path)


def test_the_fill_loads_without_the_compute_stack():
    """The add-on's Python has numpy but no torch, warp or scipy: the fill must import and run there."""
    code = ("import sys; sys.modules.update(dict.fromkeys(['torch', 'warp', 'scipy', 'gsplat'])); "
            "import numpy as np; from backend.geometry.fill import fill_scene; "
            "print(len(fill_scene({'positions': np.random.default_rng(0).normal(size=(500, 3))}, None, 8)[0]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
