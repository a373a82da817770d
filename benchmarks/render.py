"""Renderer speed and memory. Prints one JSON object per line.

    python benchmarks/render.py            # 5k/20k/100k Gaussians at 128^2 and 256^2 (CPU), + A/B, + gsplat on CUDA
    python benchmarks/render.py --quick    # one tiny case
    python benchmarks/render.py --threads 1   # pin torch's CPU threads (default: run CPU cases at 1 and 2)

Scene: an object-like cloud (Gaussians on and just under the surface of a unit ellipsoid,
linear scales log-uniform in [0.01, 0.05], opacities in [0.3, 1], random RGB, random
rotations) seen from 2.6 units with a 40-degree field of view, so it fills most of the frame.
Loss for backward: a fixed random weighting of rgb + alpha + depth.

Memory: tracemalloc does not see torch's allocations, so `peak_mb` is the growth of the
process's resident set: the kernel's high-water mark (VmHWM) is reset through
/proc/self/clear_refs just before the case, and peak_mb = VmHWM after - VmRSS before. It
includes what torch's CPU allocator keeps cached, so it bounds what the render needs from
above. (Where clear_refs is not allowed it falls back to the growth of getrusage's ru_maxrss,
which reads 0 when import-time peaks were higher.) Each case runs in a fresh subprocess.
On CUDA it is torch.cuda.max_memory_allocated.

The numbers are noisy: other processes share the 2 CPU cores. Under that contention torch's
2-thread runs can be many times slower than 1 thread (OpenMP threads spin at every op's
barrier); OMP_WAIT_POLICY=PASSIVE in the environment brings them back to 1-thread speed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from backend.render import orbit_cameras, render_splats  # noqa: E402
from backend.render.projection import project_gaussians  # noqa: E402
from backend.render.tiles import bin_gaussians, tiles_to_image  # noqa: E402
from peak_memory import PeakMemory  # noqa: E402


def make_scene(n: int, seed: int = 0, device: str = "cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    r = 1.0 - 0.15 * torch.rand(n, 1, generator=g)
    means = d * r * torch.tensor([1.0, 0.8, 0.7])
    scales = torch.exp(torch.empty(n, 3).uniform_(math.log(0.01), math.log(0.05), generator=g))
    scene = dict(
        means=means,
        quats=torch.randn(n, 4, generator=g),
        scales=scales,
        opacities=0.3 + 0.7 * torch.rand(n, generator=g),
        colors=torch.rand(n, 3, generator=g),
    )
    return {k: v.to(device=device, dtype=dtype) for k, v in scene.items()}


def camera(res_w: int, res_h: int):
    return orbit_cameras((0, 0, 0), 2.6, 1, res_w, res_h, fov_deg=40.0, elevation_deg=20.0)[0]


def naive_tile_render(p, cam, tile_size=16):
    """The straightforward tile compositor, for the A/B line: a Python loop over 16x16 tiles,
    each compositing its depth-sorted Gaussians with cumprod and plain autograd.
    Same projection and binning as the fast path; returns (rgb over white, alpha)."""
    from backend.render.gsplat_private import quat_scale_to_covar_preci

    covars, _ = quat_scale_to_covar_preci(p["quats"], p["scales"], compute_preci=False)
    viewmat, K = torch.tensor(cam.viewmat, dtype=torch.float32), torch.tensor(cam.K, dtype=torch.float32)
    W, H = cam.width, cam.height
    proj = project_gaussians(p["means"], covars, p["opacities"], viewmat, K, W, H, cam.near, cam.far)
    bins = bin_gaussians(proj.means2d, proj.radii, proj.depths, proj.visible, W, H, tile_size)
    feats = torch.cat([p["colors"], torch.ones_like(p["colors"][:, :1])], -1)
    ts = tile_size
    pix = torch.arange(ts * ts)
    tiles = []
    for t in range(bins.n_tiles):
        ids = bins.gaussian_ids[bins.offsets[t]: bins.offsets[t] + bins.counts[t]]
        px = (t % bins.tiles_x) * ts + (pix % ts) + 0.5
        py = (t // bins.tiles_x) * ts + (pix // ts) + 0.5
        d = proj.means2d[ids][:, None, :] - torch.stack([px, py], -1)[None]
        A, B, C = proj.conics[ids].T[..., None]
        sigma = 0.5 * (A * d[..., 0] ** 2 + C * d[..., 1] ** 2) + B * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(p["opacities"][ids, None] * torch.exp(-sigma), 0.999)
        alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
        T = torch.cumprod(1 - alpha, 0)
        w = alpha * torch.cat([torch.ones_like(T[:1]), T[:-1]]) * (T > 1e-4)
        tiles.append(w.T @ feats[ids])
    acc = tiles_to_image(torch.stack(tiles), bins, W, H)
    alpha = acc[..., 3:]
    return acc[..., :3] + (1 - alpha), alpha


def ab_case(n: int, res: int, repeats: int) -> dict:
    """A/B: fast path (tile 8, blocked, analytic backward) vs the naive per-tile loop, rgb+alpha loss."""
    scene = make_scene(n)
    cam = camera(res, res)
    g = torch.Generator().manual_seed(1)
    wts = [torch.rand(res, res, c, generator=g) for c in (3, 1)]
    result = {"ab": "fast_vs_naive_tile_loop", "n": n, "res": f"{res}x{res}", "threads": torch.get_num_threads()}
    images = {}
    for name in ("fast", "naive"):
        times = []
        for i in range(repeats + 1):
            p = {k: v.clone().requires_grad_() for k, v in scene.items()}
            t0 = time.perf_counter()
            if name == "fast":
                out = render_splats(p["means"], camera=cam, opacities=p["opacities"], colors=p["colors"],
                                    quats=p["quats"], scales=p["scales"], background=(1, 1, 1), backend="torch")
                rgb, alpha = out.rgb, out.alpha
            else:
                rgb, alpha = naive_tile_render(p, cam)
            ((rgb * wts[0]).sum() + (alpha * wts[1]).sum()).backward()
            if i:
                times.append(time.perf_counter() - t0)
        images[name] = rgb.detach()
        result[f"{name}_fwd_bwd_s"] = round(min(times), 4)
    result["speedup"] = round(result["naive_fwd_bwd_s"] / result["fast_fwd_bwd_s"], 2)
    result["max_abs_rgb_diff"] = float((images["fast"] - images["naive"]).abs().max())
    return result


def _loss(out, weights):
    return (out.rgb * weights[0]).sum() + (out.alpha * weights[1]).sum() + (out.depth * weights[2]).sum()


def time_case(n: int, res_w: int, res_h: int, backend: str, device: str, repeats: int, tile_size: int = 16) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    scene = make_scene(n, device=device)
    cam = camera(res_w, res_h)
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(res_h, res_w, c, generator=g).to(device) for c in (3, 1, 1)]
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    memory = PeakMemory(device).start()

    def render(p):
        return render_splats(p["means"], camera=cam, opacities=p["opacities"], colors=p["colors"],
                             quats=p["quats"], scales=p["scales"], background=(1.0, 1.0, 1.0),
                             backend=backend, tile_size=tile_size)

    fwd, fwd_bwd = [], []
    for i in range(repeats + 1):  # the first run warms up and is not counted
        with torch.no_grad():
            sync()
            t0 = time.perf_counter()
            render(scene)
            sync()
            t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        out = render(params)
        _loss(out, weights).backward()
        sync()
        t3 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            fwd_bwd.append(t3 - t2)
    peak_mb = memory.peak_mb()
    return {
        "n": n, "res": f"{res_w}x{res_h}", "backend": backend, "device": device,
        "fwd_s": round(min(fwd), 4), "fwd_bwd_s": round(min(fwd_bwd), 4),
        "fwd_s_median": round(sorted(fwd)[len(fwd) // 2], 4),
        "fwd_bwd_s_median": round(sorted(fwd_bwd)[len(fwd_bwd) // 2], 4),
        "peak_mb": round(peak_mb, 1), "repeats": repeats, "tile_size": tile_size,
        "alpha_mean": round(float(out.alpha.detach().mean()), 3), "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }


def _run_isolated(args: list[str], threads: int | None = None) -> None:
    """Run one case in a fresh interpreter so its peak RSS is its own."""
    extra = ["--threads", str(threads)] if threads else []
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *extra, "--case", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(json.dumps({"case": args, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
    else:
        print(proc.stdout.strip(), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one tiny case")
    ap.add_argument("--case", nargs=6, metavar=("N", "W", "H", "BACKEND", "DEVICE", "REPEATS"), help=argparse.SUPPRESS)
    ap.add_argument("--tile-size", type=int, default=8, help="torch compositor tile size")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--ab-only", action="store_true", help="only the A/B line")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.case:
        n, w, h, backend, device, reps = a.case
        print(json.dumps(time_case(int(n), int(w), int(h), backend, device, int(reps), a.tile_size)))
        return
    if a.quick:
        print(json.dumps(time_case(1000, 64, 64, "torch", "cpu", 2, a.tile_size)), flush=True)
        print(json.dumps(ab_case(1000, 64, 1)), flush=True)
        return
    for threads in ((1, 2) if a.threads is None else (a.threads,)):
        torch.set_num_threads(threads)
        print(json.dumps(ab_case(5_000, 128, 3)), flush=True)
    if a.ab_only:
        return
    for n in (5_000, 20_000, 100_000):
        for res in (128, 256):
            for threads in ((1, 2) if a.threads is None else (a.threads,)):
                _run_isolated([str(n), str(res), str(res), "torch", "cpu", "3" if n < 100_000 else "1"], threads)
    if torch.cuda.is_available():
        for n in (5_000, 20_000, 100_000):
            for w, h in ((256, 256), (1024, 576)):
                _run_isolated([str(n), str(w), str(h), "gsplat", "cuda", "5"])
                _run_isolated([str(n), str(w), str(h), "torch", "cuda", "3"])


if __name__ == "__main__":
    main()
