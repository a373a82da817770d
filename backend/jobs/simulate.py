"""The ``simulate`` job: forward MPM over the scene's frame range, one frame file at a time.

Each frame is written atomically to out/frames, and the solver state goes to a checkpoint after
every frame, so a cancelled or killed bake resumes where it stopped. The first frame file is the
rest state at t = 0 (the scene's first frame), so the bake starts where the object stands.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import protocol
from .device import warp_device
from ..jobctl import CancelToken, Reporter, log
from ..mpm import MPMSolver, ParticleState, SimConfig, SimulationDiverged
from ..mpm.grid import GridMapping
from ..mpm.rest import RestState, is_supported, solve_rest_state
from ..mpm.solver import projected_seconds
from .scene import build_particles, held_still_text

# Settings of the job that change the result; n_frames is left out so a longer rerun extends a bake.
_FINGERPRINT_SKIP = {"n_frames", "frame_start"}


def run_simulate(job: protocol.Job, scene: dict, reporter: Reporter, token: CancelToken, device: str) -> dict:

    sim = job.simulation
    reporter.stage("load", "Preparing particles")
    particles = build_particles(scene, sim, reporter)
    config = sim_config(sim)
    n_frames, frame_start = sim["n_frames"], sim["frame_start"]
    inputs = particles.solver_inputs()
    solver = MPMSolver(ParticleState(**inputs), config=config, device=warp_device(device))
    plan = check_substeps(solver, n_frames - 1, reporter)
    out = job.output_dir
    fingerprint = protocol.arrays_fingerprint(scene, {k: v for k, v in sim.items() if k not in _FINGERPRINT_SKIP})
    rest = rest_state(particles, sim, config, reporter, device, cache=(out / REST_STATE_FILE, fingerprint))
    if rest is not None:
        solver = MPMSolver(ParticleState(**inputs, F0=rest.F), config=config, device=warp_device(device))
    frames_dir = out / protocol.FRAMES_DIR
    frames_dir.mkdir(parents=True, exist_ok=True)
    first = resume_point(out, solver, fingerprint, reporter, frame_start)
    still = held_still_text(solver.n, solver.n_simulated)
    reporter.stage("simulate", f"Simulating {n_frames} frames of {particles.n_total} particles "
                   f"({solver.n_substeps_per_frame} substeps per frame, about {_duration(plan['seconds'])})"
                   + (f"; {still}" if still else ""),
                   data={"substep_dt": solver.substep_dt, "n_fill": particles.n_fill,
                         "n_simulated": solver.n_simulated})
    if first == 0:
        write_frame(frames_dir, frame_start, particles.rest_frame())
        first = 1
    started = time.monotonic()
    sane = SanityCheck(particles.positions[:particles.n_visible], solver.grid)
    for k in range(first, n_frames):
        token.check()
        try:
            frame = solver.step_frame()
        except SimulationDiverged as exc:
            raise protocol.Diverged(str(exc)) from None
        sane.check(frame_start + k, frame.positions[:particles.n_visible], frame.scales[:particles.n_visible])
        write_frame(frames_dir, frame_start + k, particles.visible(frame))
        protocol.atomic_save_npz(out / protocol.SIM_CHECKPOINT_FILE, frame_index=np.int64(k),
                                 fingerprint=np.str_(fingerprint), **solver.get_state())
        reporter.progress("simulate", k, n_frames - 1, message=f"frame {frame_start + k}")
    elapsed = time.monotonic() - started
    log.info("simulated %d frames in %.1f s", n_frames - first, elapsed)
    return {
        "command": "simulate",
        "frames_dir": protocol.FRAMES_DIR,
        "frame_start": frame_start,
        "n_frames": n_frames,
        "n_points": particles.n_visible,
        "n_fill": particles.n_fill,
        "substep_dt": solver.substep_dt,
        "substeps_per_frame": solver.n_substeps_per_frame,
        "seconds": elapsed,
        "projected_seconds": plan["seconds"],
        "rest_state": None if rest is None else rest_summary(rest),
    }


REST_STATE_FILE = "rest_state.npz"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def check_substeps(solver, n_frames: int, reporter: Reporter) -> dict:
    """Refuse (exit 2), before anything is simulated, a bake whose stable step needs more substeps per
    frame than simulation.max_substeps_per_frame allows; otherwise emit the projected bake time."""
    need, allowed = solver.substeps_required, solver.config.max_substeps_per_frame
    seconds = projected_seconds(solver.n_simulated, need * n_frames, solver.device)
    if need > allowed:
        raise protocol.BadJob(
            f"The stable time step needs {need} substeps per frame (allowed: {allowed}); the bake would take about "
            f"{_duration(seconds)}. Use a softer material (lower Young's modulus E), a coarser grid (lower n_grid), "
            f"or allow more substeps (simulation.max_substeps_per_frame).")
    data = {"substeps_per_frame": need, "substeps": need * n_frames, "projected_seconds": seconds}
    reporter.stage("plan", f"Bake: {n_frames} frames x {need} substeps, about {_duration(seconds)}", data=data)
    return {"seconds": seconds, **data}


def rest_state(particles, sim: dict, config, reporter: Reporter, device: str, cache=None):
    """The captured shape as the equilibrium under gravity (None when off). cache: (npz path,
    fingerprint) to reuse a rest state solved by an earlier run of the same job."""
    opts = {**protocol.SIMULATION_DEFAULTS["rest_state"], **(sim.get("rest_state") or {})}
    enabled = opts["enabled"] if opts["enabled"] is not None else any(g != 0.0 for g in config.gravity)
    if not enabled:
        return None
    if not is_supported(ParticleState(**particles.solver_inputs()), config, GridMapping.build(config, particles.positions)):
        reporter.warning("No anchor, ground or collider holds the object against gravity: it falls, so it has no "
                         "rest state. Simulating from the captured shape as it is.")
        return None
    if cache is not None and cache[0].exists():
        try:
            d = protocol.load_npz(cache[0])
            if str(d["fingerprint"]) == cache[1] and d["F"].shape == (particles.n_total, 3, 3):
                return RestState(d["F"], float(d["residual"]), int(d["iterations"]), 0, 0.0, bool(d["converged"]))
        except (protocol.BadJob, KeyError):
            pass
    reporter.stage("rest", "Finding the rest state under gravity (the captured shape as the equilibrium)")
    n_it = int(opts["max_iterations"])
    rest = solve_rest_state(ParticleState(**particles.solver_inputs()), config, warp_device(device),
                            tolerance=float(opts["tolerance"]), max_iterations=n_it,
                            max_substeps=int(opts["max_substeps"]),
                            progress=lambda i, r: reporter.progress("rest", i, n_it, message=f"residual {r:.2g}"))
    reporter.stage("rest", f"Rest state: residual {rest.residual:.2g} of the object's size after {rest.iterations} "
                   f"solve(s), {rest.substeps} substeps, {rest.seconds:.1f} s", data=rest_summary(rest))
    if not rest.stands:
        reporter.warning(f"The object cannot stand at its stiffness: it still moves by {rest.residual:.2g} of its size "
                         f"from the captured shape, and holding that shape would take a strain of {rest.strain:.0%}. "
                         "Give it a stiffer (higher E) or lighter material, or anchor more of it.")
    elif not rest.converged:
        reporter.warning(f"The rest state reached a residual of {rest.residual:.2g} of the object's size, not "
                         f"{opts['tolerance']:g}: the object will settle by about that much. A stiffer material sags "
                         "less; more rest_state.max_iterations or max_substeps may help.")
    if cache is not None:
        protocol.atomic_save_npz(cache[0], F=rest.F, residual=np.float64(rest.residual),
                                 iterations=np.int64(rest.iterations), converged=np.bool_(rest.converged),
                                 fingerprint=np.str_(cache[1]))
    return rest


def rest_summary(rest) -> dict:
    return {"residual": rest.residual, "iterations": rest.iterations, "substeps": rest.substeps,
            "seconds": rest.seconds, "converged": rest.converged, "strain": rest.strain,
            "stands": rest.stands}


class SanityCheck:
    """No exit 0 with a collapsed or exploded object: each frame's visible points must keep a bounding box of
    at least COLLAPSE of the captured one, and no splat may grow wider than the simulation domain."""

    COLLAPSE = 0.02

    def __init__(self, positions: np.ndarray, grid):
        self.extent = float(np.ptp(np.asarray(positions, np.float64), axis=0).max())
        self.domain = float((grid.domain_max - grid.domain_min).max())

    def check(self, frame: int, positions: np.ndarray, scales: np.ndarray) -> None:
        extent = float(np.ptp(positions, axis=0).max()) if len(positions) > 1 else self.extent
        if self.extent > 0 and extent < self.COLLAPSE * self.extent:
            raise protocol.Diverged(
                f"The object collapsed at frame {frame} (its size fell from {self.extent:.3g} m to {extent:.3g} m). "
                "Check the density and Young's modulus, or use a finer grid (higher n_grid).")
        widest = float(np.max(scales)) if len(scales) else 0.0
        if not np.isfinite(widest) or widest > self.domain:
            raise protocol.Diverged(
                f"The object exploded at frame {frame} (a splat is {widest:.3g} m wide, the domain {self.domain:.3g} m). "
                "Use a smaller substep (lower cfl), a softer material, or more substeps per frame.")


def sim_config(sim: dict):
    """The solver's config from the job's simulation section (keys the solver does not take are job-level)."""
    keys = {k: v for k, v in sim.items() if k not in ("n_frames", "frame_start", "material_model", "fill", "rest_state")}
    return SimConfig.from_dict(keys)  # validated by the job schema


def resume_point(out: Path, solver, fingerprint: str, reporter: Reporter, frame_start: int) -> int:
    """Index of the first frame still to simulate; restores the solver when a matching checkpoint exists."""
    path = out / protocol.SIM_CHECKPOINT_FILE
    if not path.exists():
        return 0
    try:
        state = protocol.load_npz(path)
    except protocol.BadJob as exc:
        reporter.warning(f"Not resuming: {exc.message}. Starting over")
        return 0
    if str(state.pop("fingerprint", "")) != fingerprint:
        reporter.warning("The checkpoint was made with other settings or another scene: starting over")
        return 0
    try:  # set_state refuses NaN, wrong shapes and missing arrays
        k = int(state.pop("frame_index"))
        if k < 0 or not (out / protocol.FRAMES_DIR / protocol.frame_file_name(frame_start + k)).is_file():
            raise ValueError(f"its frame {frame_start + k} is not on disk")
        solver.set_state(state)
    except (KeyError, TypeError, ValueError) as exc:
        reporter.warning(f"Not resuming from {path.name}: {exc}. Starting over")
        return 0
    reporter.warning(f"Resuming from frame {frame_start + k + 1} (earlier frames are already simulated)")
    return k + 1


def write_frame(frames_dir: Path, frame: int, arrays: dict) -> None:
    protocol.atomic_save_npz(frames_dir / protocol.frame_file_name(frame), **arrays)

