"""What running bakes through `python -m backend batch` costs. Prints one JSON object per line.

    python benchmarks/batch.py             # 8 bakes of 1,000 particles x 24 frames
    python benchmarks/batch.py --jobs 4 --frames 12

A. sequential: the 8 jobs one after another in this one process (backend.app.cli.cmd_run; torch and warp
   load once, warp's kernels compile once): the floor of what the work itself costs.
B. batch: the same 8 jobs (fresh copies) through `python -m backend batch` with a local Ray on this
   machine's cores: Ray starts, each job is a Ray task that starts `python -m backend run` (its own
   interpreter, torch and warp imports), several at a time.

overhead_per_job_s is the mean over jobs of (the job's seconds in B's report - its seconds in A):
what the subprocess, the imports and the task cost each job. B's wall time also holds Ray's start
and stop (ray_s: B's wall time minus the span of its jobs). On a shared machine the figures are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from backend import protocol  # noqa: E402


def write_jobs(root: Path, n_jobs: int, n_frames: int, n_side: int) -> list[Path]:
    """Cubes of n_side^3 particles on the ground, each a little stiffer than the last (distinct jobs)."""
    g = (np.arange(n_side) + 0.5) / n_side * 0.1 - 0.05
    x, y, z = np.meshgrid(g, g, g + 0.1, indexing="ij")
    pos = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float32)
    n = len(pos)
    folders = []
    for i in range(n_jobs):
        scene = {"positions": pos, "youngs_modulus": np.full(n, 2e4 * (1 + 0.1 * i), np.float32),
                 "poisson_ratio": np.full(n, 0.3, np.float32), "density": np.full(n, 500.0, np.float32)}
        sim = {"n_grid": 32, "n_frames": n_frames, "domain_min": [-0.15, -0.15, 0.0], "domain_max": [0.15, 0.15, 0.3],
               "ground": {"height": 0.0, "kind": "sticky", "friction": 0.0}}
        folders.append(protocol.write_job(root / f"bake_{i}", protocol.default_job("simulate", simulation=sim), scene))
    return folders


def sequential(folders: list[Path]) -> dict:
    from backend.app.cli import cmd_run

    seconds = []
    start = time.monotonic()
    for folder in folders:
        t0 = time.monotonic()
        with contextlib.redirect_stdout(io.StringIO()):
            code = cmd_run(folder)
        assert code == 0, f"{folder}: exit {code}"
        seconds.append(time.monotonic() - t0)
    return {"wall_s": time.monotonic() - start, "per_job_s": seconds}


def batch(folders: list[Path], report: Path, num_cpus: int | None) -> dict:
    cmd = [sys.executable, "-m", "backend", "batch", *map(str, folders), "--report", str(report)]
    if num_cpus:
        cmd += ["--num-cpus", str(num_cpus)]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((report / "report.json").read_text())["jobs"]
    events = [json.loads(line) for line in (report / "events.jsonl").read_text().splitlines()]
    job_times = [e["t"] for e in events if e.get("data", {}).get("job")]
    span = max(job_times) - min(job_times)
    return {"wall_s": wall, "per_job_s": [r["seconds"] for r in rows], "jobs_span_s": span, "ray_s": wall - span}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--side", type=int, default=10, help="particles per cube side")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        root = Path(tmp)
        folders = write_jobs(root / "a", args.jobs, args.frames, args.side)
        for f in folders:  # B gets identical, untouched copies
            shutil.copytree(f, root / "b" / f.name)
        a = sequential(folders)
        b = batch([root / "b" / f.name for f in folders], root / "report", args.num_cpus)
    case = {"jobs": args.jobs, "frames": args.frames, "particles": args.side ** 3, "cpus": os.cpu_count()}
    print(json.dumps({"case": "sequential_in_process", **case, "wall_s": round(a["wall_s"], 2),
                      "mean_job_s": round(float(np.mean(a["per_job_s"])), 2)}))
    print(json.dumps({"case": "batch_local_ray", **case, "wall_s": round(b["wall_s"], 2),
                      "mean_job_s": round(float(np.mean(b["per_job_s"])), 2), "ray_s": round(b["ray_s"], 2)}))
    overhead = float(np.mean(np.array(b["per_job_s"]) - np.array(a["per_job_s"])))
    print(json.dumps({"case": "overhead", **case, "overhead_per_job_s": round(overhead, 2),
                      "wall_ratio_batch_over_sequential": round(b["wall_s"] / a["wall_s"], 2)}))


if __name__ == "__main__":
    main()
