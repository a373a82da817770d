"""Small estimation scenes with a known answer: a block anchored at its base, poked sideways.

A `preview` job renders the motion with the true material; that clip is then the reference (or the
analytic prior's target) for an `estimate` job started from a wrong material.
"""

import sys
from pathlib import Path

import numpy as np

from backend import protocol
from backend.client import runner
from backend.render.camera import Camera, intrinsics_from_fov, look_at

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
                "reference_video": "../truth/out/preview_frames", "prior": "reference", "E_range": [1.0e2, 1.0e7]}
    estimate.update(est)
    return sim, estimate


# ---- the scenes of the default-settings recovery tests: (scene, sim, est, true E per point)
E_STAR = 5.0e3
STEADY_PUSH = dict(BLOCK_POKE, radius=0.06, strength=20.0, end=None)  # pushes from t=0 to the end


def steady_block():
    """A block pushed sideways by a constant force on its upper half: it sways about a bent shape."""
    scene = block_scene(E_STAR, n_side=6)
    sim, est = settings(poke=STEADY_PUSH)
    sim["pokes"] = [STEADY_PUSH]
    return scene, sim, est, np.full(len(scene["positions"]), E_STAR)


def flicked_block():
    """A block whose upper half starts moving sideways (no force): a free sway, non-convex in E."""
    scene = block_scene(E_STAR, n_side=6)
    z = scene["positions"][:, 2]
    v = np.zeros((len(z), 3), np.float32)
    v[:, 0] = 0.6 * np.clip((z - 0.02) / 0.08, 0.0, 1.0)
    scene["initial_velocity"] = v
    sim, est = settings()
    sim["pokes"] = []
    return scene, sim, est, np.full(len(z), E_STAR)


TWIN_SOFT, TWIN_STIFF = 2.0e3, 2.0e4


def two_towers():
    """A soft and a stiff tower a decade apart, one push across both; the default (KAN triplane) field."""
    scene = twin_towers(TWIN_SOFT, TWIN_STIFF)
    sim, est = settings(poke=TOWERS_POKE)
    del est["field"]
    left = scene["positions"][:, 0] < 0
    return scene, sim, est, np.where(left, TWIN_SOFT, TWIN_STIFF)


def poked_block():
    """The 8^3 block pushed briefly on its upper half (the SDS test's scene)."""
    scene = block_scene(E_STAR)
    sim, est = settings()
    return scene, sim, est, np.full(len(scene["positions"]), E_STAR)


SCENES = {"steady": steady_block, "flicked": flicked_block, "two_towers": two_towers, "poked": poked_block}


def region_errors(scene: dict, E: np.ndarray, truth: np.ndarray) -> list:
    """Relative error of the median E of each region of equal true E."""
    return [float(np.median(E[truth == t]) / t - 1) for t in np.unique(truth)]


def run_job(folder: Path, command: str, scene: dict, sim: dict, est: dict, timeout=900, on_event=None):
    """Write the job and run it through the add-on's own runner; return the RunResult."""
    protocol.write_job(folder, protocol.default_job(command, simulation=sim, estimate=est), scene)
    return runner.run_backend(sys.executable, ["run", str(folder)], timeout=timeout, on_event=on_event,
                              log_path=folder / "runner.log", cancel_file=folder / protocol.CANCEL_FILE)


def make_truth(root: Path, scene: dict, sim: dict, est: dict):
    result = run_job(root / "truth", "preview", scene, sim, est)
    assert result.ok, result.message
    return result


def estimated(folder: Path) -> dict:
    return protocol.load_npz(folder / protocol.OUT_DIR / protocol.MATERIALS_FILE)
