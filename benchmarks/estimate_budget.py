"""Calibrate backend/estimation/budget.py: measure estimation iterations at several sizes and fit the projection.

    python benchmarks/estimate_budget.py            # the calibration grid, then the fitted coefficients
    python benchmarks/estimate_budget.py --check    # a few cases: measured against backend.estimation.budget's projection
    python benchmarks/estimate_budget.py --torus45k # one default CPU iteration on a 45k-splat torus shell
    python benchmarks/estimate_budget.py --job45k   # the same as a job: python -m backend run, 2 iterations

The scene is a hollow capture: splats on the surface of a torus (the shape the fill is for), seen
from a camera that frames it as an artist would. Each case is one subprocess running the real
estimate path (backend.jobs.estimate.prepare_scene -> make_differentiable_sim -> reference supervision
-> backend.jobs.estimate.iteration) for one warm-up and one timed iteration. peak_mb is the growth of the
resident set over the timed iteration (benchmarks/peak_memory.py); time is wall seconds. Prints
JSON lines. The machine is shared: figures are noisy (run with OMP_WAIT_POLICY=PASSIVE).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from backend import protocol  # noqa: E402
from backend.estimation import budget  # noqa: E402
from peak_memory import PeakMemory, status_kb  # noqa: E402


def torus_shell(n: int, major: float = 0.07, minor: float = 0.03, seed: int = 0) -> dict:
    """scene.npz arrays: n splats on a torus surface (a hollow capture) standing on z=0, about 0.2 m wide."""
    rng = np.random.default_rng(seed)
    u, v = rng.random(n) * 2 * np.pi, rng.random(n) * 2 * np.pi
    ring = major + minor * np.cos(v)
    pos = np.stack([ring * np.cos(u), minor * np.sin(v), ring * np.sin(u) + major + minor], 1).astype(np.float32)
    spacing = np.sqrt(4 * np.pi ** 2 * major * minor / n)
    hue = np.stack([np.cos(u), np.sin(u), np.cos(v)], 1).astype(np.float32)
    return {"positions": pos, "youngs_modulus": np.full(n, 1e5, np.float32),
            "poisson_ratio": np.full(n, 0.3, np.float32), "density": np.full(n, 1000.0, np.float32),
            "scale": np.full((n, 3), np.log(0.8 * spacing), np.float32),
            "rotation": np.tile(np.float32([1, 0, 0, 0]), (n, 1)), "f_dc": hue,
            "opacity": np.full(n, 3.0, np.float32), "anchor": (pos[:, 2] < 0.02).astype(np.uint8)}


def job(width: int, height: int, frames: int, max_particles: int, n_grid: int, substeps: int | None,
        fill: bool = False) -> dict:
    from backend.render.camera import Camera, intrinsics_from_fov, look_at

    camera = Camera(look_at([0.0, -0.45, 0.2], [0, 0, 0.1]), intrinsics_from_fov(width, height, 40), width, height)
    # Gravity off: an iteration costs the same either way, but under gravity the set-up first solves the rest
    # state (minutes per case at these fixed substeps). fill=False (the calibration): the cost is fitted on the
    # particles simulated, and a filled shell would simulate some 180k of them in every case (the projection
    # counts a fill's too); fill=True: as the add-on starts it (auto).
    sim = {"n_grid": n_grid, "fps": 24.0, "n_frames": frames, "gravity": [0.0, 0.0, 0.0],
           **({} if fill else {"fill": {"enabled": False}}),
           "domain_min": [-0.2, -0.2, -0.05], "domain_max": [0.2, 0.2, 0.35],
           "substep_dt": (1.0 / 24.0 / substeps) if substeps else None,
           "pokes": [{"center": [0.0, -0.03, 0.19], "radius": 0.04, "direction": [0.0, 1.0, 0.0],
                      "strength": 5.0, "start": 0.0, "end": 0.1}]}
    est = {"prior": "reference", "field": "kan_triplane", "frames_per_group": frames, "boost_groups": 1,
           "camera": camera.to_dict(), "max_particles": max_particles, "iterations": 3}
    return protocol.default_job("estimate", simulation=sim, estimate=est)


def run_case(n_all: int, width: int, height: int, frames: int, max_particles: int, n_grid: int, fill: bool,
             substeps: int | None, repeats: int = 1) -> dict:
    import torch

    from backend.jobs.estimate import (Best, iteration, make_differentiable_sim, make_material_field, prepare_scene,
                                  simulate_and_render)
    from backend.io.video import write_frames_png
    from backend.jobctl import Reporter
    from backend.estimation.supervision import make_supervision

    torch.manual_seed(0)
    quiet = Reporter(open(os.devnull, "w"))
    arrays = torus_shell(n_all)
    d = job(width, height, frames, max_particles, n_grid, substeps, fill)
    sim, est = d["simulation"], d["estimate"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        scene = prepare_scene(arrays, sim, est, quiet, "cpu")
        field = make_material_field(est, scene.particles, "cpu", quiet)
        dsim = make_differentiable_sim(scene.particles, sim, est, "cpu")
        with torch.no_grad():
            clip = simulate_and_render(dsim, field(), scene, frames)
        write_frames_png((clip.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), Path(folder) / "ref")
        est["reference_video"] = str(Path(folder) / "ref")
        supervision = make_supervision(est, Path(folder), "cpu", frames, scene, quiet)
        optimizer = torch.optim.Adam(field.parameters(), lr=0.005)
        setup_s = time.perf_counter() - t0
        spf = substeps_per_frame(dsim, scene.particles)
        best = Best()
        iteration(field, dsim, scene, supervision, optimizer, 0, repeats + 1, frames, best)  # warm-up (compiles)
        base_mb = (status_kb("VmRSS") or 0) / 1024.0
        memory = PeakMemory("cpu").start()
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            iteration(field, dsim, scene, supervision, optimizer, i + 1, repeats + 1, frames, best)
            times.append(time.perf_counter() - t)
        peak = memory.peak_mb()
    return {"n": scene.particles.n_visible, "n_sim": scene.particles.n_total, "width": width, "height": height,
            "frames": frames, "n_grid": n_grid, "substeps_per_frame": spf, "iteration_s": round(min(times), 3),
            "peak_mb": round(peak, 1), "process_mb": round(base_mb + peak, 1), "setup_s": round(setup_s, 2)}


def substeps_per_frame(dsim, p) -> int:
    """The plan the differentiable sim will use for these materials (the CFL bound or substep_dt)."""
    from backend.mpm.grid import plan_substeps
    from backend.mpm.solver import max_wave_speed

    c_max = max_wave_speed(p.E, p.nu, p.rho, p.material_id)
    return plan_substeps(dsim.config, dsim.grid.dx, c_max, float(np.linalg.norm(p.velocity, axis=1).max())).n


def _case(args: list) -> dict:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", *map(str, args)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"case": args, "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(lines[-1])


def with_projection(m: dict) -> dict:
    p = budget.project(n_particles=m["n_sim"], width=m["width"], height=m["height"], frames=m["frames"],
                       substeps_per_frame=m["substeps_per_frame"], n_grid=m["n_grid"], prior="reference",
                       device="cpu")
    return {**m, "projected_s": round(p.seconds, 2), "projected_mb": round(p.memory_mb, 1)}


GRID = [  # (n_all, width, height, frames, max_particles, n_grid, substeps per frame)
    (3000, 128, 72, 8, 0, 64, 10), (3000, 512, 288, 8, 0, 64, 10), (3000, 1024, 576, 8, 0, 64, 10),
    (10000, 256, 144, 8, 0, 64, 10), (10000, 256, 144, 8, 0, 64, 40), (3000, 256, 144, 8, 0, 64, 40),
    (30000, 256, 144, 8, 0, 64, 10), (10000, 1024, 576, 8, 0, 64, 10), (3000, 256, 144, 4, 0, 32, 10),
    (3000, 256, 144, 8, 0, 128, 10),
    # the simulation-bound cases a stiff object makes (the sample plant: a few hundred substeps per frame)
    (3000, 128, 72, 16, 0, 24, 200), (10000, 128, 72, 8, 0, 64, 100),
]


def fit(rows: list[dict]) -> dict:
    """Non-negative least squares of seconds on budget.terms and MB on budget.memory_terms, weighted by 1/sqrt(y)
    (between absolute and relative error: small cases count, large ones dominate less)."""
    from scipy.optimize import nnls

    ok = [r for r in rows if "error" not in r]
    out = {}
    for key, regressors in (("iteration_s", budget.terms), ("process_mb", budget.memory_terms)):
        terms = np.array([regressors(r["n_sim"], r["width"] * r["height"], r["frames"], r["substeps_per_frame"],
                                     r["n_grid"]) for r in ok])
        y = np.array([r[key] for r in ok])
        w = 1.0 / np.sqrt(y)
        coef, _ = nnls(terms * w[:, None], y * w)
        out[key] = [float(f"{c:.3g}") for c in coef]
    return out


def job_path_45k(folder: Path) -> dict:
    """The default CPU estimate on a 45k-splat torus shell through `python -m backend run`, as the add-on
    starts it: a preview job renders the reference clip, then a 2-iteration estimate fits it. Peak memory
    is the child processes' maximum resident set (getrusage)."""
    import resource

    d = budget.DEVICE_DEFAULTS["cpu"]
    w, h = budget.capped_size(1920, 1080, d.long_side)
    arrays = torus_shell(45000)
    rows = {}
    for command in ("preview", "estimate"):
        spec = job(w, h, 8, d.max_particles, 64, None, fill=True)
        spec["command"] = command
        spec["estimate"].update(iterations=2, tolerance_decades=1e-6,
                                reference_video=str(folder / "preview" / "out" / protocol.PREVIEW_FRAMES_DIR))
        protocol.write_job(folder / command, spec, arrays)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "backend", "run", str(folder / command)],
                              capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)) or ".")
        rows[command] = {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)}
        if proc.returncode:
            rows[command]["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1]
            break
    summary = json.loads((folder / "estimate" / "out" / protocol.SUMMARY_FILE).read_text()) \
        if rows.get("estimate", {}).get("exit") == 0 else {}
    stages = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    plan = next((e["message"] for e in stages if e.get("stage") == "load" and "per iteration" in e.get("message", "")), "")
    return {"case": "default CPU estimate, 45k-splat torus shell, job path", "width": w, "height": h,
            "max_particles": d.max_particles, "runs": rows, "projection": plan,
            "iteration_s": [round(r["seconds"], 2) for r in summary.get("history", [])],
            "max_rss_mb_of_children": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", nargs=8, type=int, help=argparse.SUPPRESS)  # a GRID row, then fill (0 / 1)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--torus45k", action="store_true")
    ap.add_argument("--job45k", action="store_true")
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(*a.case[:6], bool(a.case[7]), a.case[6] or None)))
        return
    if a.job45k:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(job_path_45k(Path(folder))), flush=True)
        return
    if a.torus45k:
        d = budget.DEVICE_DEFAULTS["cpu"]
        # the default CPU estimate: capped particles and 16:9 resolution, automatic substeps
        w, h = budget.capped_size(1920, 1080, d.long_side)
        print(json.dumps(with_projection(_case([45000, w, h, 8, d.max_particles, 64, 0, 1]))), flush=True)
        return
    cases = GRID[:3] if a.check else GRID
    rows = []
    for c in cases:
        row = _case([*c, 0])
        rows.append(row)
        print(json.dumps(with_projection(row) if "error" not in row else row), flush=True)
    if not a.check:
        print(json.dumps({"fit": fit(rows)}), flush=True)


if __name__ == "__main__":
    main()
