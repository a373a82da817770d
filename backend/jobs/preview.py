"""The ``preview`` job: simulate with the scene's own materials and render what the estimator's camera sees.

The frames are written losslessly (PNG) beside an MP4, so a preview doubles as a reference video for
reference-fitting, with the very same particles, camera, frame count and renderer as estimation.
"""

from __future__ import annotations

import torch

from .. import protocol
from ..io.video import write_frames_png
from .estimate import make_differentiable_sim, prepare_scene, simulate_and_render
from ..jobctl import CancelToken, Reporter
from .report import to_uint8_frames, write_preview


def run_preview(job: protocol.Job, arrays: dict, reporter: Reporter, token: CancelToken, device: str) -> dict:
    est, sim = job.estimate, job.simulation
    reporter.stage("load", "Preparing particles and camera")
    scene = prepare_scene(arrays, sim, est, reporter, device)
    n_render = est["frames_per_group"] * est["boost_groups"]
    dsim = make_differentiable_sim(scene.particles, sim, est, device, reporter)
    p = scene.particles
    token.check()
    reporter.stage("simulate", f"Simulating and rendering {n_render} frames")
    with torch.no_grad():
        mats = {"log_E": torch.log(torch.as_tensor(p.E, device=device)),
                "nu": torch.as_tensor(p.nu, device=device), "rho": torch.as_tensor(p.rho, device=device)}
        video = simulate_and_render(dsim, mats, scene, n_render)
    token.check()
    out = job.output_dir
    # The frames carry their rate, so an estimate fitting them compares at their own frame times.
    write_frames_png(to_uint8_frames(video), out / protocol.PREVIEW_FRAMES_DIR, fps=dsim.config.fps)
    write_preview(video, out / protocol.PREVIEW_FILE, fps=dsim.config.fps)
    motion = float((video[1:] - video[:1]).abs().mean()) if n_render > 1 else 0.0
    return {"command": "preview", "frames_dir": protocol.PREVIEW_FRAMES_DIR, "preview": protocol.PREVIEW_FILE,
            "n_frames": n_render, "width": int(video.shape[-1]), "height": int(video.shape[-2]),
            "mean_motion": motion, "n_points": int(p.n_visible)}
