"""The product end to end, headless: ``python scripts/demo.py --out demo_out [--quick]`` (``make demo``).

Real Blender (bpy as a module) with the add-on registered from an extension repository, and the real
backend run through the add-on's own job runner (core.workflow), on the bundled potted plant:

  import the splats -> particles with the pot and soil anchored -> the suggested camera and poke ->
  estimate the materials (SVD distillation on a CUDA machine with the weights; otherwise fitting a
  reference clip filmed at 60 fps from the sample's hidden "true" materials, gravity off) -> simulate and bake the
  24 fps scene with gravity on (the backend first finds the rest state that holds the captured shape) to the
  geometry-nodes cache -> demo.blend, a Cycles preview GIF, a stiffness heat map and the loss plot.

It ends with E per region against the hidden truth, the poked flower's sway (its peak and how far it
comes back within the clip) and the time each stage took.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples"
ADDON_ID = "splat_physics"
REPO_MODULE = "splat_demo"
ADDON_MODULE = f"bl_ext.{REPO_MODULE}.{ADDON_ID}"

# The scene runs at film rate. The reference clip comes from a 60 fps camera: estimation compares the motion at
# the clip's own frame times (read from the clip), whatever the scene's rate, with CFL substeps in between.
FPS = 24
REFERENCE_FPS = 60.0
FULL = {"estimate_size": (128, 72), "max_particles": 3000, "iterations": 24, "bake_frames": 72, "gif_frames": 12}
QUICK = {"estimate_size": (96, 54), "max_particles": 800, "iterations": 3, "bake_frames": 16, "gif_frames": 2}
SWAY_RETURN = 0.3  # the flower must come back below this share of its peak displacement within the clip
ESTIMATE_COMMON = {"frames_per_group": 8, "boost_groups": 2, "field": "kan_triplane",
                   "learning_rate": 0.008, "E_range": [1.0e4, 3.0e7]}
N_GRID = 24
DOMAIN = ((-0.2, -0.2, -0.01), (0.2, 0.2, 0.43))  # around the plant, 24 cells of ~18 mm on its longest side
ANCHORED = ("pot", "soil")
SCORED = ("stem", "leaves", "flower")
RENDER_SIZE = (480, 270)
# An --out folder the demo made holds this marker; a rerun replaces only the demo's own outputs there.
OUT_MARKER = ".splat_physics_demo"
OUT_NAMES = ("demo.blend", "demo.blend1", "preview.gif", "preview_frames", "stiffness.png", "loss.png", "splat_cache",
             "splat_jobs")


class Stages:
    """Wall-clock time per stage, printed as it goes."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        print(f"\n== {name}", flush=True)
        t0 = time.monotonic()
        value = fn(*args, **kwargs)
        self.times[name] = time.monotonic() - t0
        print(f"   ({self.times[name]:.1f} s)", flush=True)
        return value


# ---------------------------------------------------------------------------- Blender + add-on
def start_blender():
    """Import bpy with user data in a temp folder and register the add-on as an installed extension."""
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="splat_demo_user_"))
    import bpy  # noqa: I001 - bpy first: it puts addon_utils on the path
    import addon_utils

    ext_dir = Path(tempfile.mkdtemp(prefix="splat_demo_ext_"))
    (ext_dir / ADDON_ID).symlink_to(REPO, target_is_directory=True)
    prefs = bpy.context.preferences
    if prefs.extensions.repos.get(REPO_MODULE) is None:
        prefs.extensions.repos.new(name=REPO_MODULE, module=REPO_MODULE, custom_directory=str(ext_dir), source="USER")
    mod = addon_utils.enable(ADDON_MODULE, default_set=True, handle_error=None)
    if mod is None:
        raise SystemExit("The add-on failed to register; see the messages above")
    addon_prefs = prefs.addons[ADDON_MODULE].preferences
    addon_prefs.backend_python = sys.executable  # this .venv has the backend packages
    addon_prefs.device = "auto"
    return bpy


def core(name: str):
    return importlib.import_module(f"{ADDON_MODULE}.core.{name}")


def empty_scene(bpy, n_frames: int):
    for ob in list(bpy.data.objects):
        bpy.data.objects.remove(ob, do_unlink=True)
    scene = bpy.context.scene
    scene.render.fps, scene.render.fps_base = FPS, 1.0
    scene.frame_start, scene.frame_end = 1, n_frames
    scene.frame_set(1)
    scene.use_gravity = True
    return scene


# ---------------------------------------------------------------------------- scene setup
def import_plant(bpy):
    obj = core("splat_objects").import_splats(SAMPLE / "potted_plant.ply", bpy.context)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    print(f"   imported {len(obj.data.vertices)} splats as '{obj.name}'")
    return obj


def region_masks(info: dict, n: int) -> dict:
    import numpy as np

    masks = {}
    for name, region in info["regions"].items():
        m = np.zeros(n, bool)
        for start, stop in region["ranges"]:
            m[start:stop] = True
        masks[name] = m
    return masks


def setup_particles(bpy, obj, info: dict):
    """Particles in a fixed domain, an anchor box around the pot and soil, the suggested camera."""
    from mathutils import Vector

    context = bpy.context
    domain = core("scene_to_job").convert_to_particles(context, obj)
    lo, hi = Vector(DOMAIN[0]), Vector(DOMAIN[1])
    domain.matrix_world = _box_matrix((lo + hi) / 2, (hi - lo) / 2)
    domain.empty_display_size = 1.0
    s = obj.splat_physics
    s.n_grid = N_GRID

    boxes = [info["regions"][r] for r in ANCHORED]
    a_lo = Vector([min(b["bbox_min"][i] for b in boxes) - 0.005 for i in range(3)])
    a_hi = Vector([max(b["bbox_max"][i] for b in boxes) + 0.0005 for i in range(3)])
    anchor = core("interactions").add_interaction(context, "ANCHOR", target=obj, location=(a_lo + a_hi) / 2, size=1.0)
    anchor.scale = (a_hi - a_lo) / 2
    anchor.name = "Anchor (pot and soil)"

    cam_info = info["camera"]
    cam = bpy.data.objects.new("Demo Camera", bpy.data.cameras.new("Demo Camera"))
    context.scene.collection.objects.link(cam)
    cam.location = cam_info["location"]
    forward = Vector(cam_info["target"]) - Vector(cam_info["location"])
    cam.rotation_mode = "QUATERNION"
    cam.rotation_quaternion = forward.to_track_quat("-Z", "Y")
    cam.data.lens, cam.data.sensor_width = cam_info["lens_mm"], cam_info["sensor_width_mm"]
    cam.data.sensor_fit = cam_info["sensor_fit"]
    cam.data.clip_start, cam.data.clip_end = cam_info["clip_start"], cam_info["clip_end"]
    context.scene.camera = cam
    context.view_layer.objects.active = obj
    context.view_layer.update()
    print(f"   domain {DOMAIN[0]} .. {DOMAIN[1]} m, grid {N_GRID}; anchor box {tuple(round(v, 3) for v in a_lo)} .. "
          f"{tuple(round(v, 3) for v in a_hi)}; camera from the regions file")
    return anchor


def _box_matrix(centre, half):
    from mathutils import Matrix

    return Matrix.Translation(centre) @ Matrix.Diagonal((*half, 1.0))


def add_poke(bpy, obj, info: dict):
    """The sample's suggested poke: a short sideways push on the upper stem, below the flower."""
    from mathutils import Vector

    poke_info = info["poke"]
    scene = bpy.context.scene
    poke = core("interactions").add_interaction(bpy.context, "POKE", target=obj, location=poke_info["centre"],
                                                size=2 * max(poke_info["half_size"]))
    poke.rotation_mode = "QUATERNION"
    poke.rotation_quaternion = Vector(poke_info["direction"]).to_track_quat("Z", "Y")  # pushes along its +Z
    r = poke.splat_role
    r.use_end = True
    r.start_frame = scene.frame_start + round(poke_info["start_s"] * FPS)
    r.end_frame = max(r.start_frame + 1, scene.frame_start + round(poke_info["end_s"] * FPS))
    r.strength = poke_info["speed_m_s"] * FPS / (r.end_frame - r.start_frame)  # m/s^2 reaching the suggested speed
    bpy.context.view_layer.objects.active = obj
    print(f"   poke at {poke_info['centre']} along {poke_info['direction']}, {r.strength:.3g} m/s^2, "
          f"frames {r.start_frame}-{r.end_frame}")
    return poke


# ---------------------------------------------------------------------------- estimation
def choose_prior() -> tuple[str, str]:
    """('svd', why) with a CUDA GPU and the SVD weights, else ('reference', why)."""
    try:
        proc = subprocess.run([sys.executable, "-m", "backend", "doctor", "--json"], cwd=REPO, capture_output=True,
                              text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "reference", f"the backend check failed ({exc})"
    report = {}
    for line in proc.stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("kind") == "result":
            report = event.get("data") or {}
    cuda = bool(report.get("device", {}).get("cuda"))
    svd = next((m for m in report.get("models", []) if m.get("kind") == "svd"), {})
    if cuda and svd.get("ok"):
        return "svd", f"a CUDA GPU and the SVD weights ({svd.get('model')}) are available"
    missing = [w for w, ok in (("no CUDA GPU", cuda), ("no SVD weights in the local cache", svd.get("ok"))) if not ok]
    return "reference", (" and ".join(missing) + ": fitting a reference clip rendered from the hidden true materials "
                         "instead")


def run_job(kind: str, start, timeout: float = 3600):
    """Start a job through core.workflow, print its progress, wait, and fail loudly if it did not succeed."""
    registry = importlib.import_module(f"{ADDON_MODULE}.backend.client.registry")
    active = start()
    last = [0.0]

    def on_event(event):
        now = time.monotonic()
        if event.kind == "progress" and (now - last[0] > 5 or event.step == event.total):
            last[0] = now
            print(f"   {event.message or event.stage} ({event.step}/{event.total})", flush=True)
        elif event.kind in ("warning", "stage"):
            print(f"   {event.message}", flush=True)

    active.on_event = on_event
    result = registry.wait(kind, timeout=timeout)
    obj = next(o for o in bpy_module().data.objects if o.name == active.label)
    message = obj.splat_physics.last_message
    if result is None or not result.ok:
        raise SystemExit(f"The {kind} failed: {message}")
    print(f"   {message}")
    return core("job_folder").job_dir_for(obj, kind)


def bpy_module():
    import bpy

    return bpy


def true_materials(info: dict, masks: dict, n: int) -> dict:
    import numpy as np

    arrays = {k: np.zeros(n, np.float32) for k in ("youngs_modulus", "poisson_ratio", "density")}
    for name, region in info["regions"].items():
        for key in arrays:
            arrays[key][masks[name]] = region["material"][key]
    return arrays


def start_value(info: dict) -> float:
    """A uniform wrong start: the geometric mean of the free regions' true E."""
    values = [info["regions"][r]["material"]["youngs_modulus"] for r in SCORED]
    return float(math.sqrt(min(values) * max(values)))


def estimate(bpy, obj, info, masks, cfg, prior: str) -> Path:
    import numpy as np

    mats, workflow = core("materials"), core("workflow")
    scene = bpy.context.scene
    n = mats.point_count(obj)
    w, h = cfg["estimate_size"]
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = w, h, 100
    scene.frame_end = scene.frame_start + ESTIMATE_COMMON["frames_per_group"] * ESTIMATE_COMMON["boost_groups"] - 1
    opts = dict(ESTIMATE_COMMON, max_particles=cfg["max_particles"], iterations=cfg["iterations"])
    # The poke's sway is what is fitted; gravity only adds the rest-state solve to every job (the elastic
    # response does not depend on it), so the clip and the estimate leave it out. The bake has it.
    scene.use_gravity = False
    truth = true_materials(info, masks, n)
    start = start_value(info)
    if prior == "svd":
        opts.update(frames_per_group=14, boost_groups=1, prior="svd")
    else:
        mats.apply_materials(obj, truth)
        print(f"   filming the reference clip from the hidden true materials ({w}x{h}, "
              f"{ESTIMATE_COMMON['frames_per_group'] * ESTIMATE_COMMON['boost_groups']} frames at {REFERENCE_FPS:g} fps; "
              f"the scene runs at {FPS} fps)")
        preview_dir = run_job(workflow.PREVIEW, lambda: workflow.start_preview(
            bpy.context, obj, simulation={"fps": REFERENCE_FPS}, **opts))
        opts.update(prior="reference", reference_video=str(preview_dir / "out" / "preview_frames"))
    mats.apply_materials(obj, {"youngs_modulus": np.full(n, start, np.float32),
                               "poisson_ratio": truth["poisson_ratio"], "density": truth["density"]})
    print(f"   start: E = {start:.3g} Pa everywhere; prior {opts['prior']}, field {opts['field']}, "
          f"{opts['iterations']} iterations on at most {opts['max_particles']} points")
    return run_job(workflow.ESTIMATE, lambda: workflow.start_estimate(bpy.context, obj, **opts))


# ---------------------------------------------------------------------------- bake, save, render
def bake(bpy, obj, blend: Path, n_frames: int) -> Path:
    """Simulate and bake the scene's frame range under gravity, from the rest state that holds the captured shape
    (the backend solves it first); returns the simulate job's folder."""
    workflow = core("workflow")
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, n_frames
    scene.use_gravity = True
    print(f"   {n_frames} frames at {FPS} fps ({n_frames / FPS:g} s) with gravity on")
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))  # the cache goes next to it, with a relative path
    job_dir = run_job(workflow.SIMULATE, lambda: workflow.start_simulate(bpy.context, obj, target="gn_cache"))
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    return job_dir


def sway(job_dir: Path, mask) -> dict:
    """The flower's sway in the baked frames: its mean displacement from the captured shape per frame, the
    peak, and the smallest displacement after the peak as a share of it (how far it comes back)."""
    import numpy as np

    protocol = importlib.import_module(f"{ADDON_MODULE}.backend.protocol")
    files = list(protocol.iter_frame_files(job_dir / protocol.OUT_DIR))
    rest = protocol.load_npz(files[0])["positions"][mask]  # frame 1 is the captured shape
    disp = np.array([np.linalg.norm(protocol.load_npz(f)["positions"][mask] - rest, axis=1).mean() for f in files])
    peak = int(np.argmax(disp))
    back = peak + int(np.argmin(disp[peak:]))
    return {"peak_mm": 1000 * float(disp[peak]), "peak_frame": peak + 1, "return_ratio": float(disp[back] / disp[peak])
            if disp[peak] > 0 else 1.0, "return_frame": back + 1, "frames": len(files),
            "displacement_mm": [round(1000 * float(d), 2) for d in disp]}


def setup_render(bpy, samples: int = 4):
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    if hasattr(scene.cycles, "use_denoising"):
        scene.cycles.use_denoising = False
    scene.render.resolution_x, scene.render.resolution_y = RENDER_SIZE
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.film_transparent = False
    world = scene.world or bpy.data.worlds.new("Demo World")
    scene.world = world
    world.color = (0.9, 0.9, 0.9)
    if world.use_nodes and world.node_tree.nodes.get("Background"):
        world.node_tree.nodes["Background"].inputs["Color"].default_value = (0.9, 0.9, 0.9, 1.0)


def render_frame(bpy, frame: int, path: Path) -> Path:
    scene = bpy.context.scene
    scene.frame_set(frame)
    scene.render.filepath = str(path)
    with quiet_stdout():
        bpy.ops.render.render(write_still=True)
    return path


@contextmanager
def quiet_stdout():
    """Cycles prints a status line per step to the process's stdout: keep the demo's output readable."""
    sys.stdout.flush()
    saved = os.dup(1)
    with open(os.devnull, "wb") as null:
        os.dup2(null.fileno(), 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def render_preview(bpy, out: Path, n_frames: int, n_gif: int) -> Path:
    from PIL import Image

    frames_dir = out / "preview_frames"
    frames_dir.mkdir(exist_ok=True)
    picks = sorted({1 + round(i * (n_frames - 1) / max(n_gif - 1, 1)) for i in range(n_gif)})
    images = []
    for f in picks:
        render_frame(bpy, f, frames_dir / f"frame_{f:04d}.png")
        images.append(Image.open(frames_dir / f"frame_{f:04d}.png").convert("RGB"))
    gif = out / "preview.gif"
    step_s = (picks[1] - picks[0]) / FPS if len(picks) > 1 else 0.1
    images[0].save(gif, save_all=True, append_images=images[1:], duration=max(40, int(step_s * 1000)), loop=0)
    print(f"   rendered frames {picks} -> {gif}")
    return gif


def render_heatmap(bpy, obj, out: Path) -> Path:
    core("materials").update_heatmap(obj)
    core("look").set_heatmap_visible(obj, True)
    path = render_frame(bpy, 1, out / "stiffness.png")
    core("look").set_heatmap_visible(obj, False)
    return path


# ---------------------------------------------------------------------------- summary
def region_report(obj, info, masks) -> list[tuple]:
    import numpy as np

    E = core("materials").read_attr(obj, "youngs_modulus")
    rows = []
    for name in SCORED:
        est = float(np.median(E[masks[name]]))
        true = info["regions"][name]["material"]["youngs_modulus"]
        rows.append((name, est, true, 100.0 * (est - true) / true))
    return rows


def print_summary(prior, why, rows, motion: dict, stages: Stages, out: Path):
    print("\n================ Splat Physics demo: summary ================")
    print(f"Prior used: {prior} ({why})")
    print("E per region (median over its splats) vs the hidden truth:")
    for name, est, true, err in rows:
        print(f"  {name:<7} estimated {est:10.4g} Pa   true {true:10.4g} Pa   error {err:+6.1f} %")
    print(f"Sway of the poked flower ({motion['frames']} frames at {FPS} fps, gravity on): "
          f"peak {motion['peak_mm']:.1f} mm "
          f"at frame {motion['peak_frame']}, back to {100 * motion['return_ratio']:.0f} % of it at frame "
          f"{motion['return_frame']}")
    print("Time per stage:")
    for name, seconds in stages.times.items():
        print(f"  {name:<34} {seconds:7.1f} s")
    print(f"  {'total':<34} {sum(stages.times.values()):7.1f} s")
    print("Outputs:")
    for name in ("demo.blend", "preview.gif", "stiffness.png", "loss.png"):
        print(f"  {out / name}")
    print(f"  {out / 'splat_cache'} (the baked geometry-nodes cache), {out / 'splat_jobs'} (job folders and logs)")


def prepare_out(out: Path) -> str | None:
    """Make ``out`` ready for a run; a message (changing nothing) when it holds files the demo did not write."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder"
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in OUT_NAMES + (OUT_MARKER,))
        if others and not (out / OUT_MARKER).is_file():
            return (f"--out {out} already holds files the demo did not write ('{others[0]}'); choose a new or "
                    "empty folder (nothing in it was changed)")
        for name in OUT_NAMES:  # the previous run's outputs only: anything else in the folder stays
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / OUT_MARKER).write_text("written by scripts/demo.py; a rerun replaces its outputs here\n")
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", type=Path)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (fewer iterations and frames)")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    out = args.out.resolve()
    problem = prepare_out(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    blend = out / "demo.blend"
    info = json.loads((SAMPLE / "potted_plant_regions.json").read_text())
    stages = Stages()

    bpy = stages.run("Start Blender and register the add-on", start_blender)
    empty_scene(bpy, cfg["bake_frames"])
    obj = stages.run("Import samples/potted_plant.ply", import_plant, bpy)
    masks = region_masks(info, len(obj.data.vertices))
    stages.run("Particles, anchor, camera, poke", lambda: (setup_particles(bpy, obj, info), add_poke(bpy, obj, info)))
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))  # job folders and caches live next to the .blend
    prior, why = stages.run("Choose the prior", choose_prior)
    print(f"   prior: {prior} ({why})")
    est_dir = stages.run("Estimate materials", estimate, bpy, obj, info, masks, cfg, prior)
    shutil.copyfile(est_dir / "out" / "loss.png", out / "loss.png")
    rows = region_report(obj, info, masks)
    sim_dir = stages.run("Simulate and bake (gn_cache)", bake, bpy, obj, blend, cfg["bake_frames"])
    motion = sway(sim_dir, masks["flower"])
    (out / "sway.json").write_text(json.dumps(motion, indent=1))
    setup_render(bpy)
    stages.run("Cycles preview", render_preview, bpy, out, cfg["bake_frames"], cfg["gif_frames"])
    stages.run("Stiffness heat map", render_heatmap, bpy, obj, out)
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    print_summary(prior, why, rows, motion, stages, out)
    if not args.quick and motion["return_ratio"] >= SWAY_RETURN:
        print(f"The flower did not come back below {SWAY_RETURN:.0%} of its peak within the clip", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
