"""Small real jobs for the foundation tests (no mocks: they run the real backend)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from backend import protocol

REPO = Path(__file__).resolve().parents[2]


def cube_points(n_side: int = 6, size: float = 0.1, z0: float = 0.05) -> np.ndarray:
    g = (np.arange(n_side) + 0.5) / n_side * size - size / 2
    x, y, z = np.meshgrid(g, g, g + z0 + size / 2, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1).astype(np.float32)


def simulate_job(folder: Path, n_frames: int = 4, n_side: int = 6, n_grid: int = 16, **sim) -> Path:
    pos = cube_points(n_side)
    n = len(pos)
    scene = {
        "positions": pos,
        "youngs_modulus": np.full(n, 2e4, np.float32),
        "poisson_ratio": np.full(n, 0.3, np.float32),
        "density": np.full(n, 500.0, np.float32),
        "scale": np.full((n, 3), np.log(0.01), np.float32),
        "rotation": np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)),
    }
    settings = {"n_grid": n_grid, "n_frames": n_frames, "fps": 24.0, "domain_min": [-0.15, -0.15, 0.0],
                "domain_max": [0.15, 0.15, 0.3], "ground": {"height": 0.0, "kind": "sticky", "friction": 0.0}}
    settings.update(sim)
    job = protocol.default_job("simulate", simulation=settings)
    protocol.write_job(folder, job, scene)
    return folder


def run_cli(job_dir: Path, timeout: float = 300):
    """Run `python -m backend run` as the add-on does; return (code, events, stderr)."""
    proc = subprocess.run([sys.executable, "-u", "-m", "backend", "run", str(job_dir)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    events = [protocol.Event.from_json(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, events, proc.stderr


def edit_job(folder: Path, **changes) -> None:
    path = folder / protocol.JOB_FILE
    job = json.loads(path.read_text())
    job.update(changes)
    path.write_text(json.dumps(job))
