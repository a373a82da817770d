"""Estimation speed and memory, split by stage. Prints one JSON object per line.

    python benchmarks/estimate.py            # N=5k particles, 64x64, 8 frames: tiny SVD, tiny ModelScope, reference
    python benchmarks/estimate.py --quick    # N=500, 4 frames
    python benchmarks/estimate.py --cases reference --baseline   # the reference iteration before and after
    python benchmarks/estimate.py --svd-xt DIR   # the CUDA case from a local SVD-xt folder instead of the hub cache

One iteration is the backend's own (backend.jobs.estimate.iteration) cut into stages with detach()
boundaries, so each stage's forward and backward are timed on their own:

    field()  ->| DifferentiableSim |->  simulate_and_render's frames |->  Supervision.loss (MDS)
    field_*     sim_fwd / sim_bwd        render_fwd / render_bwd          prior (forward + backward)

field_bwd also holds the regulariser, gradient clipping and the Adam step. Each line gives the
stages' wall seconds of the fastest iteration (`wall`) and the process CPU seconds (all threads) of
the cheapest one (`cpu`); sim_s, render_s, prior_s, field_s are the wall forward + backward sums.
`--baseline` runs every case a second time as it ran before the estimate-speed work (plain
wp.launch for every substep kernel, a new tape per rollout, the garbage collector walking every
object at each full collection, 8-pixel compositor tiles, torch's default CPU threads), printed first as
"<case>-baseline".

The scene is a jittered cube of N splats on the ground, poked sideways (as in the estimation tests),
seen by a 64x64 camera; the field is kan_triplane. The priors are the tiny randomly initialised SVD /
ModelScope pipelines of tests/support/tiny_models.py, saved to disk and loaded through load_prior exactly
like real weights, so the prior figures measure the pipeline's overhead, not a real UNet's cost;
"reference" is the L2 + SSIM loss against a clip.

Each case runs in a fresh subprocess after one warm-up iteration; the figures are those of the
fastest of the timed iterations. iteration_cpu_s is the process CPU time of the cheapest iteration
(all threads together; steadier than the wall time on a shared machine). peak_mb is the growth of
the resident set over the timed iterations (VmHWM reset through /proc/self/clear_refs; getrusage's
ru_maxrss growth where that is not allowed), so it includes what torch's allocator caches; on CUDA it is
torch.cuda.max_memory_allocated. The machine is shared: the times are noisy, and under contention
torch's OpenMP threads spin (prior and render figures several times too high); running with
OMP_WAIT_POLICY=PASSIVE in the environment avoids most of that.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))  # support/

import numpy as np  # noqa: E402
import torch  # noqa: E402

from backend import protocol  # noqa: E402
from backend.jobs.estimate import (make_differentiable_sim, make_material_field, prepare_scene,  # noqa: E402
                              simulate_and_render)
from backend.jobctl import Reporter  # noqa: E402
from backend.jobs.device import set_estimate_threads  # noqa: E402
from backend.jobs import estimate as estimate_job  # noqa: E402
from backend.estimation.supervision import make_supervision  # noqa: E402
from peak_memory import PeakMemory  # noqa: E402

PROMPT = "a jelly cube wobbling"


# --------------------------------------------------------------------------- the scene
def cube_scene(n: int, size: float = 0.1, E: float = 5e3, seed: int = 0) -> dict:
    """scene.npz arrays: n splats jittered through a cube standing on z=0, its bottom layer anchored."""
    rng = np.random.default_rng(seed)
    pos = (rng.random((n, 3), dtype=np.float32) - 0.5) * size + np.float32([0, 0, size / 2])
    spacing = size / n ** (1 / 3)
    colours = np.where(pos[:, 2:3] > size / 2, [1.2, -0.2, -1.0], [-1.0, 0.4, 1.2]).astype(np.float32)
    return {"positions": pos, "youngs_modulus": np.full(n, E, np.float32),
            "poisson_ratio": np.full(n, 0.3, np.float32), "density": np.full(n, 500.0, np.float32),
            "scale": np.full((n, 3), np.log(0.7 * spacing), np.float32),
            "rotation": np.tile(np.float32([1, 0, 0, 0]), (n, 1)), "f_dc": colours,
            "opacity": np.full(n, 3.0, np.float32), "anchor": (pos[:, 2] < 0.015).astype(np.uint8)}


def job_sections(kind: str, model: str, res: int, frames: int, reference: str = "") -> tuple[dict, dict]:
    from backend.render.camera import Camera, intrinsics_from_fov, look_at

    camera = Camera(look_at([0.28, -0.3, 0.16], [0, 0, 0.05]), intrinsics_from_fov(res, res, 38), res, res)
    sim = {"n_grid": 32, "fps": 96.0, "n_frames": frames, "gravity": [0.0, 0.0, 0.0],
           "domain_min": [-0.2, -0.2, -0.05], "domain_max": [0.2, 0.2, 0.35],
           "pokes": [{"center": [0.0, 0.0, 0.1], "radius": 0.09, "direction": [1.0, 1.0, 0.0],
                      "strength": 60.0, "start": 0.0, "end": 0.04}]}
    est = {"prior": kind, "model": model, "prompt": PROMPT if kind == "modelscope" else "", "loss": "mds",
           "field": "kan_triplane", "frames_per_group": frames, "boost_groups": 1, "camera": camera.to_dict(),
           "reference_video": reference, "E_range": [1.0e2, 1.0e7], "iterations": 30}
    job = protocol.default_job("estimate", simulation=sim, estimate=est)
    return job["simulation"], job["estimate"]


# --------------------------------------------------------------------------- one split iteration
def _sync(device: str):
    if not device.startswith("cuda"):
        return lambda: None
    import warp as wp

    def sync():
        wp.synchronize()
        torch.cuda.synchronize()
    return sync


def split_iteration(field, dsim, scene, supervision, optimizer, it: int, total: int, n_render: int, device: str) -> dict:
    """backend.jobs.estimate.iteration with a detach() boundary between stages.

    Returns wall seconds and process CPU seconds (all threads) of each stage's forward and backward:
    field_fwd, sim_fwd, render_fwd, prior (the loss, forward and backward), render_bwd, sim_bwd and
    field_bwd (with the regulariser, gradient clipping and the Adam step); *_s are forward + backward."""
    sync = _sync(device)
    wall, cpu = {}, {}

    def lap(name, t0):
        sync()
        now, now_cpu = time.perf_counter(), time.process_time()
        wall[name], cpu[name] = now - t0[0], now_cpu - t0[1]
        return now, now_cpu

    sync()
    t = start = (time.perf_counter(), time.process_time())
    optimizer.zero_grad(set_to_none=True)
    mats = field()
    reg = field.regularizer()
    t = lap("field_fwd", t)

    leaf = {k: mats[k].detach().requires_grad_(mats[k].requires_grad) for k in ("log_E", "nu", "rho")}
    velocity = torch.as_tensor(scene.particles.velocity, device=leaf["log_E"].device)
    positions, covs = dsim(leaf["log_E"], leaf["nu"], leaf["rho"], velocity, n_render - 1)
    t = lap("sim_fwd", t)

    pos_in, cov_in = positions.detach().requires_grad_(), covs.detach().requires_grad_()
    video = simulate_and_render(lambda *_: (pos_in, cov_in), leaf, scene, n_render)
    t = lap("render_fwd", t)

    video_in = video.detach().requires_grad_()
    loss, _ = supervision.loss(video_in, it, total)
    loss.backward()
    t = lap("prior", t)

    video.backward(_grad(video_in))
    t = lap("render_bwd", t)

    torch.autograd.backward([positions, covs], [_grad(pos_in), _grad(cov_in)])
    t = lap("sim_bwd", t)

    outs = [mats[k] for k in leaf if mats[k].requires_grad]
    grads = [_grad(leaf[k]) for k in leaf if mats[k].requires_grad]
    if reg.requires_grad:
        outs, grads = outs + [reg], grads + [torch.ones_like(reg)]
    torch.autograd.backward(outs, grads)
    torch.nn.utils.clip_grad_norm_(field.parameters(), 1.0)
    optimizer.step()
    t = lap("field_bwd", t)
    out = {"iteration_s": t[0] - start[0], "iteration_cpu_s": t[1] - start[1], "loss": float(loss.detach())}
    for name in wall:
        out[f"{name}_s"], out[f"{name}_cpu_s"] = wall[name], cpu[name]
    for stage in ("field", "sim", "render"):
        for unit in ("s", "cpu_s"):
            out[f"{stage}_{unit}"] = out[f"{stage}_fwd_{unit}"] + out[f"{stage}_bwd_{unit}"]
    out["prior_cpu_s"] = cpu["prior"]
    return out


def _grad(x: torch.Tensor) -> torch.Tensor:
    return x.grad if x.grad is not None else torch.zeros_like(x)


# --------------------------------------------------------------------------- one case (own process)
def run_case(case: str, kind: str, model: str, n: int, res: int, frames: int, device: str, repeats: int,
             sim_threads: int | None = None, baseline: bool = False) -> dict:
    torch.manual_seed(0)
    model = "" if model == "-" else model
    quiet = Reporter(open(os.devnull, "w"))
    arrays = cube_scene(n)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        sim, est = job_sections(kind, model, res, frames)
        if sim_threads:
            sim["threads"] = sim_threads
        scene = prepare_scene(arrays, sim, est, quiet, device)
        field = make_material_field(est, scene.particles, device, quiet)
        dsim = make_differentiable_sim(scene.particles, sim, est, device)
        if kind == "reference":  # the clip of the starting material: the loss's cost does not depend on its content
            from backend.io.video import write_frames_png

            with torch.no_grad():
                clip = simulate_and_render(dsim, field(), scene, frames)
            write_frames_png((clip.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8),
                             Path(folder) / "ref")
            est["reference_video"] = str(Path(folder) / "ref")
        supervision = make_supervision(est, Path(folder), device, frames, scene, quiet)
        optimizer = torch.optim.Adam(field.parameters(), lr=0.005)
        setup_s = time.perf_counter() - t0
        if baseline:  # before: plain launches, a new tape per rollout, the collector walking everything, 8 px tiles
            dsim.core.use_threads(dsim.n_threads, replay=False)
            dsim.release = lambda run: None
            estimate_job.RENDER_TILE_SIZE = 8
        else:
            gc.freeze()  # as run_estimate does after its set-up
        split_iteration(field, dsim, scene, supervision, optimizer, 0, repeats + 1, frames, device)  # warm-up
        memory = PeakMemory(device)
        memory.start()
        runs = [split_iteration(field, dsim, scene, supervision, optimizer, i + 1, repeats + 1, frames, device)
                for i in range(repeats)]
        peak_mb = memory.peak_mb()
    gc.unfreeze()
    best = min(runs, key=lambda r: r["iteration_s"])
    cheapest = min(runs, key=lambda r: r["iteration_cpu_s"])
    line = {"case": case + ("-baseline" if baseline else ""), "n": scene.particles.n_visible, "res": res,
            "frames": frames}
    line.update({k: round(best[k], 4) for k in ("sim_s", "render_s", "prior_s", "field_s", "iteration_s")})
    line.update(peak_mb=round(peak_mb, 1), device=device, setup_s=round(setup_s, 2), repeats=repeats,
                iteration_s_median=round(float(np.median([r["iteration_s"] for r in runs])), 4),
                iteration_cpu_s=round(cheapest["iteration_cpu_s"], 4),
                iteration_cpu_s_median=round(float(np.median([r["iteration_cpu_s"] for r in runs])), 4),
                threads=torch.get_num_threads(), sim_threads=getattr(dsim, "n_threads", 1), loss=best["loss"])
    # the breakdown: wall seconds of the fastest iteration, CPU seconds of the cheapest one
    line["wall"] = {k: round(best[f"{k}_s"], 4) for k in STAGES}
    line["cpu"] = {k: round(cheapest[f"{k}_cpu_s"], 4) for k in STAGES}
    return line


STAGES = ("field_fwd", "sim_fwd", "render_fwd", "prior", "render_bwd", "sim_bwd", "field_bwd")


def _isolated(args: list[str], case: str, threads: int | None, extra: tuple = ()) -> None:
    extra = (["--threads", str(threads)] if threads else []) + list(extra)
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *extra, "--case", *args],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(json.dumps({"case": case, "error": tail}), flush=True)
    else:
        print(lines[-1], flush=True)


def _svd_xt_line(model: str | None, threads: int | None) -> None:
    if not torch.cuda.is_available():
        print(json.dumps({"case": "svd-xt-cuda", "skipped": "no CUDA device"}), flush=True)
        return
    from backend.prior import DEFAULT_MODELS, check_model

    model = model or DEFAULT_MODELS["svd"]
    ok, message = check_model("svd", model)
    if not ok:
        print(json.dumps({"case": "svd-xt-cuda", "skipped": message}), flush=True)
        return
    _isolated(["svd-xt-cuda", "svd", model, "5000", "256", "25", "cuda", "2"], "svd-xt-cuda", threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=500 particles, 4 frames")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: the product's choice, backend.jobs.device)")
    ap.add_argument("--svd-xt", default=None, help="local SVD-xt folder or hub id for the CUDA case")
    ap.add_argument("--sim-threads", type=int, default=None, help="simulation.threads (default: automatic)")
    ap.add_argument("--cases", default="svd,modelscope,reference",
                    help="comma-separated priors to run (svd, modelscope, reference)")
    ap.add_argument("--baseline", action="store_true",
                    help="also run each case without the launch replay and the frozen collector (before/after)")
    ap.add_argument("--case", nargs=8, help=argparse.SUPPRESS)
    ap.add_argument("--as-baseline", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        case, kind, model, n, res, frames, device, repeats = a.case
        # --threads, else the product's choice (backend.jobs.device); the baseline keeps torch's own, as before
        if a.threads:
            torch.set_num_threads(a.threads)
        elif not a.as_baseline:
            set_estimate_threads(device, kind)
        print(json.dumps(run_case(case, kind, model, int(n), int(res), int(frames), device, int(repeats),
                                  a.sim_threads, a.as_baseline)))
        return
    from support.tiny_models import save_tiny_modelscope, save_tiny_svd

    n, frames, repeats = (500, 4, 1) if a.quick else (5000, 8, 4)
    extra = ["--sim-threads", str(a.sim_threads)] if a.sim_threads else []
    kinds = [k for k in ("svd", "modelscope", "reference") if k in a.cases.split(",")]
    with tempfile.TemporaryDirectory() as models:
        tiny = {"svd": save_tiny_svd(os.path.join(models, "svd")) if "svd" in kinds else "",
                "modelscope": save_tiny_modelscope(os.path.join(models, "modelscope")) if "modelscope" in kinds else "",
                "reference": ""}
        for kind in kinds:
            case = f"tiny-{kind}" if kind != "reference" else "reference"
            args = [case, kind, tiny[kind] or "-", str(n), "64", str(frames), "cpu", str(repeats)]
            for before in ([True, False] if a.baseline else [False]):
                _isolated(args, case, a.threads, extra + (["--as-baseline"] if before else []))
    _svd_xt_line(a.svd_xt, a.threads)


if __name__ == "__main__":
    main()
