"""The ``simulate`` job: forward MPM over the scene's frame range, one frame file at a time.

Each frame is written atomically to out/frames, and the solver state goes to a checkpoint after
every frame, so a cancelled or killed bake resumes where it stopped. The first frame file is the
rest state at t = 0 (the scene's first frame), so the bake starts where the object stands.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import protocol
from .device import warp_device
from .jobctl import CancelToken, Reporter, log
from .particles import build_particles

# Settings of the job that change the result; n_frames is left out so a longer rerun extends a bake.
_FINGERPRINT_SKIP = {"n_frames", "frame_start"}


def run_simulate(job: protocol.Job, scene: dict, reporter: Reporter, token: CancelToken, device: str) -> dict:
    from .mpm import MPMSolver, ParticleState, SimulationDiverged

    sim = job.simulation
    reporter.stage("load", "Preparing particles")
    particles = build_particles(scene, sim, reporter)
    config = sim_config(sim)
    solver = MPMSolver(ParticleState(**particles.solver_inputs()), config=config, device=warp_device(device))
    out = job.output_dir
    frames_dir = out / protocol.FRAMES_DIR
    frames_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = protocol.arrays_fingerprint(scene, {k: v for k, v in sim.items() if k not in _FINGERPRINT_SKIP})
    first = resume_point(out, solver, fingerprint, reporter, sim["frame_start"])
    n_frames, frame_start = sim["n_frames"], sim["frame_start"]
    reporter.stage("simulate", f"Simulating {n_frames} frames of {particles.n_total} particles "
                   f"({solver.n_substeps_per_frame} substeps per frame)",
                   data={"substep_dt": solver.substep_dt, "n_fill": particles.n_fill})
    if first == 0:
        write_frame(frames_dir, frame_start, particles.rest_frame())
        first = 1
    started = time.monotonic()
    for k in range(first, n_frames):
        token.check()
        try:
            frame = solver.step_frame()
        except SimulationDiverged as exc:
            raise protocol.Diverged(str(exc)) from None
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
    }


def sim_config(sim: dict):
    """The solver's config from the job's simulation section (keys the solver does not take are job-level)."""
    from .mpm import SimConfig

    keys = {k: v for k, v in sim.items() if k not in ("n_frames", "frame_start", "material_model", "fill")}
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

