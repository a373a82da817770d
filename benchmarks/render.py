"""Renderer speed and memory. Prints one JSON object per line.

    python benchmarks/render.py            # 5k/20k/100k Gaussians at 128^2 and 256^2 (CPU), + A/B, + gsplat on CUDA
    python benchmarks/render.py --quick    # one tiny case

Scene: an object-like cloud (Gaussians on and just under the surface of a unit ellipsoid,
linear scales log-uniform in [0.01, 0.05], opacities in [0.3, 1], random RGB, random
rotations) seen from 2.6 units with a 40-degree field of view, so it fills most of the frame.
Loss for backward: a fixed random weighting of rgb + alpha + depth.

Memory: tracemalloc does not see torch's allocations, so `peak_mb` is the growth of the
process's peak resident set (resource.getrusage ru_maxrss) across the case, measured in a
fresh subprocess per case so earlier cases do not hide it. It includes allocator caching and
is an upper bound on what the render itself needs. On CUDA it is torch.cuda.max_memory_allocated.

The numbers are noisy: other processes share the 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from backend.render import orbit_cameras, render_splats  # noqa: E402


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


def _loss(out, weights):
    return (out.rgb * weights[0]).sum() + (out.alpha * weights[1]).sum() + (out.depth * weights[2]).sum()


def time_case(n: int, res_w: int, res_h: int, backend: str, device: str, repeats: int, tile_size: int = 16) -> dict:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    scene = make_scene(n, device=device)
    cam = camera(res_w, res_h)
    g = torch.Generator().manual_seed(1)
    weights = [torch.rand(res_h, res_w, c, generator=g).to(device) for c in (3, 1, 1)]
    params = {k: v.clone().requires_grad_() for k, v in scene.items()}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

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
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024.0  # ru_maxrss is KiB on Linux
    return {
        "n": n, "res": f"{res_w}x{res_h}", "backend": backend, "device": device,
        "fwd_s": round(min(fwd), 4), "fwd_bwd_s": round(min(fwd_bwd), 4),
        "fwd_s_median": round(sorted(fwd)[len(fwd) // 2], 4), "fwd_bwd_s_median": round(sorted(fwd_bwd)[len(fwd_bwd) // 2], 4),
        "peak_mb": round(peak_mb, 1), "repeats": repeats, "tile_size": tile_size,
        "alpha_mean": round(float(out.alpha.mean()), 3), "threads": torch.get_num_threads(),
    }


def _run_isolated(args: list[str]) -> None:
    """Run one case in a fresh interpreter so its peak RSS is its own."""
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(json.dumps({"case": args, "error": proc.stderr.strip().splitlines()[-1:]}), flush=True)
    else:
        print(proc.stdout.strip(), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="one tiny case")
    ap.add_argument("--case", nargs=6, metavar=("N", "W", "H", "BACKEND", "DEVICE", "REPEATS"), help=argparse.SUPPRESS)
    ap.add_argument("--tile-size", type=int, default=16)
    a = ap.parse_args()
    if a.case:
        n, w, h, backend, device, reps = a.case
        print(json.dumps(time_case(int(n), int(w), int(h), backend, device, int(reps), a.tile_size)))
        return
    if a.quick:
        print(json.dumps(time_case(1000, 64, 64, "torch", "cpu", 2, a.tile_size)), flush=True)
        return
    for n in (5_000, 20_000, 100_000):
        for res in (128, 256):
            _run_isolated([str(n), str(res), str(res), "torch", "cpu", "3" if n < 100_000 else "1"])
    if torch.cuda.is_available():
        for n in (5_000, 20_000, 100_000):
            for w, h in ((256, 256), (1024, 576)):
                _run_isolated([str(n), str(w), str(h), "gsplat", "cuda", "5"])
                _run_isolated([str(n), str(w), str(h), "torch", "cuda", "3"])


if __name__ == "__main__":
    main()
