"""``python -m backend demo``: the backend alone on the bundled sample, no Blender needed.

It poses the potted plant with its per-region materials, anchors the pot, pokes the stem, bakes the
motion through the same ``simulate`` job the add-on runs, and renders a preview clip from the sample's
camera. The full product demo (Blender import, estimation, bake, Cycles) is ``make demo``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .. import protocol
from ..io.ply import read_splats
from ..io.sh import dc_to_rgb
from ..io.video import write_video
from ..protocol import ExitCode
from ..render.camera import Camera, blender_intrinsics, look_at

SAMPLE = Path(__file__).resolve().parents[2] / "samples"  # backend/app/demo.py -> the repository root


def sample_scene() -> tuple[dict, dict]:
    """scene.npz arrays of the potted plant with its regions' materials, and the regions description."""
    info = json.loads((SAMPLE / "potted_plant_regions.json").read_text())
    s = read_splats(SAMPLE / info["ply"])
    n = s.count
    arrays = {"positions": s.positions, "f_dc": s.f_dc, "f_rest": s.f_rest, "opacity": s.opacity, "scale": s.scale,
              "rotation": s.rotation, "youngs_modulus": np.zeros(n, np.float32), "poisson_ratio": np.zeros(n, np.float32),
              "density": np.zeros(n, np.float32), "anchor": np.zeros(n, np.uint8)}
    for region in info["regions"].values():
        m = region["material"]
        for start, stop in region["ranges"]:
            arrays["youngs_modulus"][start:stop] = m["youngs_modulus"]
            arrays["poisson_ratio"][start:stop] = m["poisson_ratio"]
            arrays["density"][start:stop] = m["density"]
            arrays["anchor"][start:stop] = int(m["anchored"])
    return arrays, info


def sample_camera(info: dict, width: int, height: int) -> dict:
    cam = info["camera"]
    K = blender_intrinsics(cam["lens_mm"], cam["sensor_width_mm"], cam.get("sensor_height_mm", 24.0),
                           cam.get("sensor_fit", "AUTO"), 0.0, 0.0, width, height)
    return Camera(look_at(cam["location"], cam["target"], cam["up"]), K, width, height).to_dict()


def simulate_job(info: dict, n_frames: int, fps: float) -> dict:
    poke = info["poke"]
    duration = max(poke["end_s"] - poke["start_s"], 1e-3)
    sim = {"n_grid": 32, "fps": fps, "n_frames": n_frames, "domain_min": [-0.25, -0.25, -0.01],
           "domain_max": [0.25, 0.25, 0.45], "ground": {"height": 0.0, "kind": "sticky", "friction": 0.5},
           "pokes": [{"center": poke["centre"], "radius": float(max(poke["half_size"])) * 2, "direction": poke["direction"],
                      "strength": poke["speed_m_s"] / duration, "start": poke["start_s"], "end": poke["end_s"]}]}
    return protocol.default_job("simulate", simulation=sim)


def cmd_demo(out: Path, quick: bool = False) -> int:
    out = out.resolve()
    if not (SAMPLE / "potted_plant_regions.json").is_file():  # the installed extension ships without samples/
        print(f"The demo needs the repository's samples/ folder ({SAMPLE} is missing); run it from a checkout",
              file=sys.stderr)
        return ExitCode.MISSING_RESOURCE
    arrays, info = sample_scene()
    job_dir = out / "simulate_job"
    n_frames = 6 if quick else 48
    protocol.write_job(job_dir, simulate_job(info, n_frames, 24.0), arrays)
    print(f"Simulating the potted plant ({len(arrays['positions'])} splats, {n_frames} frames) in {job_dir}")
    t0 = time.monotonic()
    code = subprocess.call([sys.executable, "-m", "backend", "run", str(job_dir)], stdout=subprocess.DEVNULL)
    if code != ExitCode.OK:
        print(f"simulation failed ({protocol.EXIT_MEANINGS.get(code, code)}); see {job_dir / 'out' / protocol.LOG_FILE}")
        return code
    print(f"  simulated in {time.monotonic() - t0:.1f} s")
    render_preview(job_dir / protocol.OUT_DIR, arrays, info, out / "backend_preview.gif", quick)
    print(f"Preview: {out / 'backend_preview.gif'}")
    return ExitCode.OK


def render_preview(sim_out: Path, arrays: dict, info: dict, path: Path, quick: bool) -> None:
    import torch  # the demo's own process only orchestrates the jobs; torch loads for this preview alone

    from ..render import render_splats

    camera = Camera.from_dict(sample_camera(info, 160 if quick else 320, 90 if quick else 180))
    colors = torch.as_tensor(dc_to_rgb(arrays["f_dc"]))
    opacities = torch.sigmoid(torch.as_tensor(arrays["opacity"]))
    frames = []
    for f in protocol.iter_frame_files(sim_out):
        fr = protocol.load_npz(f)
        with torch.no_grad():
            img = render_splats(torch.as_tensor(fr["positions"]), camera=camera, opacities=opacities, colors=colors,
                                quats=torch.as_tensor(fr["rotations"]), scales=torch.as_tensor(fr["scales"]),
                                background=torch.ones(3))
        frames.append((img.rgb.clamp(0, 1).numpy() * 255).astype(np.uint8))
    write_video(np.stack(frames), path, fps=24.0)
