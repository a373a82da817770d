"""Small estimation scenes with a known answer: a block anchored at its base, poked sideways.

A `preview` job renders the motion with the true material; that clip is then the reference (or the
analytic prior's target) for an `estimate` job started from a wrong material.
"""

import sys
from pathlib import Path

import numpy as np

from backend import protocol
from backend.render.camera import Camera, intrinsics_from_fov, look_at

from .addon_pkg import load
from .jobs import cube_points

RES = 64


def block_scene(E, n_side=8, size=0.1):
    """A cube of splats standing on z=0; E is a scalar or a function of the positions."""
    pos = cube_points(n_side, size=size, z0=0.0)
    n = len(pos)
    e = E(pos) if callable(E) else np.full(n, E)
    colours = np.where((pos[:, 2:3] > 0.05), [1.2, -0.2, -1.0], [-1.0, 0.4, 1.2]).astype(np.float32)
    return {"positions": pos, "youngs_modulus": np.asarray(e, np.float32),
            "poisson_ratio": np.full(n, 0.3, np.float32), "density": np.full(n, 500.0, np.float32),
            "scale": np.full((n, 3), np.log(0.35 * size / n_side * 2), np.float32),
            "rotation": np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)), "f_dc": colours,
            "opacity": np.full(n, 3.0, np.float32), "anchor": (pos[:, 2] < 0.015).astype(np.uint8)}


def twin_towers(E_left, E_right, n_side=6, size=0.07, gap=0.05):
    """Two towers anchored on the ground, a soft and a stiff one: each sways by its own stiffness."""
    half = (size + gap) / 2
    parts = [block_scene(E, n_side, size) for E in (E_left, E_right)]
    for part, dx in zip(parts, (-half, half)):
        part["positions"] = part["positions"] + np.array([dx, 0, 0], np.float32)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def camera() -> dict:
    return Camera(look_at([0.28, -0.3, 0.16], [0, 0, 0.05]), intrinsics_from_fov(RES, RES, 38), RES, RES).to_dict()


# A push on the block's upper half; the twin towers take one wide push, in the image plane, across both.
BLOCK_POKE = {"center": [0.0, 0.0, 0.1], "radius": 0.035, "direction": [1.0, 0.0, 0.0], "strength": 60.0,
              "start": 0.0, "end": 0.04}
TOWERS_POKE = dict(BLOCK_POKE, radius=0.09, direction=[1.0, 1.0, 0.0])


def settings(frames=8, groups=2, fps=96.0, poke=None, **est):
    # 96 fps: frames resolve the block's sway for every E in [E*/10, 10 E*] (no aliasing between frames).
    sim = {"n_grid": 16, "fps": fps, "n_frames": frames * groups, "gravity": [0.0, 0.0, 0.0],
           "domain_min": [-0.2, -0.2, -0.05], "domain_max": [0.2, 0.2, 0.35],
           "pokes": [poke or BLOCK_POKE]}
    estimate = {"camera": camera(), "frames_per_group": frames, "boost_groups": groups, "field": "global",
                "iterations": 16, "tolerance_decades": 1e-3,
                "reference_video": "../truth/out/preview_frames", "prior": "reference", "E_range": [1.0e2, 1.0e7]}
    estimate.update(est)
    return sim, estimate


def run_job(folder: Path, command: str, scene: dict, sim: dict, est: dict, timeout=900, on_event=None):
    """Write the job and run it through the add-on's own runner; return the RunResult."""
    runner = load("core.runner")
    protocol.write_job(folder, protocol.default_job(command, simulation=sim, estimate=est), scene)
    return runner.run_backend(sys.executable, ["run", str(folder)], timeout=timeout, on_event=on_event,
                              log_path=folder / "runner.log", cancel_file=folder / protocol.CANCEL_FILE)


def make_truth(root: Path, scene: dict, sim: dict, est: dict):
    result = run_job(root / "truth", "preview", scene, sim, est)
    assert result.ok, result.message
    return result


def estimated(folder: Path) -> dict:
    return protocol.load_npz(folder / protocol.OUT_DIR / protocol.MATERIALS_FILE)
