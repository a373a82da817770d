"""From the Blender scene to a job folder: the particles, the domain, the forces, the camera.

``build_job(context, obj, command)`` gathers everything the artist set up into the contract's
form (backend/protocol.py): world-space splat arrays, per-point materials (attributes or the
object's defaults), the anchor mask from anchor objects, the artist's material locks, and the
simulation/estimate sections. ``write_job_folder`` writes it with protocol.write_job.

Nothing here changes the scene except ``convert_to_particles`` (which adds the domain empty) and
the temporary frame changes needed to sample animated colliders and the camera (restored after).
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import bpy
import numpy as np

from ..backend.estimation import budget
from ..backend.geometry import fill
from ..backend import protocol
from ..backend.render.camera import CameraError, camera_from_blender
from . import interactions, materials, paths, props, splats

DOMAIN_MARGIN = 1.5  # default domain side / the object's largest extent
JOBS_DIR = "splat_jobs"
SCENE_KEYS = ("f_dc", "f_rest", "opacity", "scale", "rotation")
# Above this many points the panel's fill count is computed on request (Preview Fill), not on every settings
# change: it takes seconds for tens of thousands of splats at the default grid (about 6 s for 45k), too slow
# to run on every slider step.
FILL_READOUT_MAX_POINTS = 20_000


class SetupError(ValueError):
    """The scene cannot be turned into a job; the message tells the artist what to change."""


# ---------------------------------------------------------------------------- points
def world_positions(obj) -> np.ndarray:
    """The object's points in world space, checked: at least one, all finite."""
    if obj is None:
        raise SetupError("Select the splat object to simulate first")
    if obj.type != "MESH":
        raise SetupError(f"'{obj.name}' is a {obj.type.lower()} object; splat physics needs a mesh of points "
                         "(import a .ply splat, or pick a mesh)")
    local = splats.local_positions(obj.data)
    if len(local) == 0:
        raise SetupError(f"'{obj.name}' has no points to simulate. Import a splat .ply or pick a mesh with vertices")
    bad = ~np.isfinite(local).all(axis=1)
    if bad.any():
        raise SetupError(f"'{obj.name}' has {int(bad.sum())} of {len(local)} points with invalid (NaN or infinite) "
                         "positions. Delete them (or re-import the file) and try again")
    mw = np.array(obj.matrix_world, dtype=np.float64)
    return local.astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]


# ---------------------------------------------------------------------------- domain
def convert_to_particles(context, obj):
    """Mark ``obj`` as MPM particles and give it a domain box; checks the points before changing anything."""
    positions = world_positions(obj)
    settings = obj.splat_physics
    if settings.domain is None or settings.domain.name not in context.scene.objects:
        settings.domain = _make_domain(context, obj, positions)
    if not settings.enabled:  # first conversion: start from the prior that works on this machine
        settings.prior = device_guidance()[2]
    settings.enabled = True
    context.view_layer.update()
    update_readouts(obj)
    return settings.domain


def _make_domain(context, obj, positions):
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    half = 0.5 * DOMAIN_MARGIN * max(float(np.max(hi - lo)), 1e-3)
    empty = bpy.data.objects.new(f"{obj.name} Domain", None)
    empty.empty_display_type = "CUBE"
    empty.empty_display_size = 1.0
    empty.location = tuple((lo + hi) / 2)
    empty.scale = (half, half, half)
    empty.hide_render = True
    for coll in obj.users_collection:
        coll.objects.link(empty)
        break
    else:
        context.scene.collection.objects.link(empty)
    # Parented, so moving the object carries its domain along; the inverse keeps it where it was made.
    empty.parent = obj
    empty.matrix_parent_inverse = obj.matrix_world.inverted_safe()
    return empty


def domain_bounds(obj) -> tuple[list[float], list[float]] | None:
    """World AABB of the domain empty (its cube spans +-display size locally); None without a domain."""
    empty = obj.splat_physics.domain
    if empty is None:
        return None
    s = empty.empty_display_size
    corners = np.array([(x, y, z, 1.0) for x in (-s, s) for y in (-s, s) for z in (-s, s)])
    world = corners @ np.array(empty.matrix_world, dtype=np.float64).T
    lo, hi = world[:, :3].min(axis=0), world[:, :3].max(axis=0)
    if not np.all(hi - lo > 1e-9):
        raise SetupError(f"The domain box '{empty.name}' is flat; give it a size on every axis")
    return lo.tolist(), hi.tolist()


def _grid_box(obj, positions) -> tuple[np.ndarray, np.ndarray]:
    bounds = domain_bounds(obj)
    if bounds is not None:
        return np.array(bounds[0]), np.array(bounds[1])
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    c, half = (lo + hi) / 2, 0.5 * DOMAIN_MARGIN * max(float(np.max(hi - lo)), 1e-3)
    return c - half, c + half


def cell_indices(positions, lo, hi, resolution: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Integer cell of each point inside the box (cells are cubes: resolution along the longest side)."""
    dx = float(np.max(hi - lo)) / resolution
    dims = np.maximum(np.ceil((hi - lo) / dx - 1e-9).astype(int), 1)
    inside = np.all((positions >= lo) & (positions <= hi), axis=1)
    ijk = np.clip(np.floor((positions[inside] - lo) / dx).astype(np.int64), 0, dims - 1)  # hi itself: last cell
    return ijk, dims, dx


def occupied_cells(positions, lo, hi, resolution: int) -> int:
    ijk, dims, _ = cell_indices(positions, lo, hi, resolution)
    flat = (ijk[:, 0] * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]
    return int(len(np.unique(flat)))


def fill_settings(settings) -> dict:
    """The job's simulation.fill section from the panel's settings."""
    return {"enabled": props.FILL_MODE_TO_JOB[settings.fill_mode], "max_particles": int(settings.fill_max_particles),
            "resolution": int(settings.fill_resolution)}


def estimate_fill(obj, positions=None) -> tuple[int, np.ndarray, str]:
    """How many particles the backend's interior fill will add, their world positions and a sentence on why.

    It runs the backend's own fill (backend/geometry/fill.py) on the arrays scene.npz will hold, so the count
    is the backend's count, not an estimate of it.
    """
    s = obj.splat_physics
    arrays = splat_scene_arrays(obj, positions)
    centres, info = fill.fill_scene(arrays, fill_settings(s), s.n_grid)
    return len(centres), centres, fill.describe_fill(info)


def update_readouts(obj) -> None:
    """Particles per cell (N / occupied cells at the grid resolution) and the fill count, for the panel."""
    s = obj.splat_physics
    try:
        positions = world_positions(obj)
    except SetupError:
        s.particles_per_cell, s.occupied_cells, s.fill_preview_count = 0.0, 0, -1
        return
    lo, hi = _grid_box(obj, positions)
    cells = occupied_cells(positions, lo, hi, s.n_grid)
    s.occupied_cells = cells
    s.particles_per_cell = len(positions) / max(cells, 1)
    if s.fill_mode == "OFF" or len(positions) > FILL_READOUT_MAX_POINTS:
        s.fill_preview_count, s.fill_preview_note = -1, ""  # large objects: on request (Preview Fill)
    else:
        s.fill_preview_count, _, s.fill_preview_note = estimate_fill(obj, positions)


# ---------------------------------------------------------------------------- camera
def render_size(scene) -> tuple[int, int]:
    """The scene's output size in pixels (resolution times its percentage)."""
    r = scene.render
    return (max(1, round(r.resolution_x * r.resolution_percentage / 100)),
            max(1, round(r.resolution_y * r.resolution_percentage / 100)))


@contextmanager
def at_frame(scene, frame: int):
    """Evaluate the scene at ``frame`` and put the current frame back afterwards."""
    current, sub = scene.frame_current, scene.frame_subframe
    if current == frame and sub == 0.0:
        yield
        return
    scene.frame_set(frame)
    try:
        yield
    finally:
        scene.frame_set(current, subframe=sub)


def camera_settings(scene, cam_obj=None, long_side: int = 0) -> dict:
    """The active camera at the first frame, in the job's form (OpenCV viewmat, K, render size).

    ``long_side`` > 0 caps the image's long side (same framing, fewer pixels): the estimator renders
    every frame at this size, and the scene's output size (1920x1080 by default) would not fit in memory.
    """
    cam_obj = cam_obj or scene.camera
    if cam_obj is None or cam_obj.type != "CAMERA":
        raise SetupError("Estimation needs an active camera: the video prior judges the motion as seen from it. "
                         "Add a camera aimed at the object and make it active (View > Cameras > Set Active Object "
                         "as Camera)")
    r, cam = scene.render, cam_obj.data
    width, height = budget.capped_size(*render_size(scene), long_side)
    with at_frame(scene, scene.frame_start):
        matrix = [list(row) for row in cam_obj.matrix_world]
    try:
        camera = camera_from_blender(
            matrix, cam.lens, cam.sensor_width, cam.sensor_height, width, height, sensor_fit=cam.sensor_fit,
            shift_x=cam.shift_x, shift_y=cam.shift_y, pixel_aspect_x=r.pixel_aspect_x,
            pixel_aspect_y=r.pixel_aspect_y, clip_start=cam.clip_start, clip_end=cam.clip_end, type=cam.type)
    except CameraError as exc:
        raise SetupError(f"Camera '{cam_obj.name}': {exc}") from None
    return camera.to_dict()


# ---------------------------------------------------------------------------- job sections
def material_defaults(obj) -> dict[str, float]:
    s = obj.splat_physics
    return {"youngs_modulus": s.youngs_modulus, "poisson_ratio": s.poisson_ratio, "density": s.density}


def simulation_settings(context, obj) -> dict:
    scene, s = context.scene, obj.splat_physics
    bounds = domain_bounds(obj)
    gravity = list(scene.gravity) if scene.use_gravity else [0.0, 0.0, 0.0]
    pokes = [interactions.poke_settings(o, scene) for o in interactions.interaction_objects(scene, obj, "POKE")]
    winds = [interactions.wind_settings(o, scene) for o in interactions.interaction_objects(scene, obj, "WIND")]
    colliders = interactions.collider_settings(
        [o for o in interactions.interaction_objects(scene, obj, "COLLIDER") if o.type == "EMPTY"], scene)
    if scene.frame_end < scene.frame_start:
        raise SetupError("The scene's frame range is empty: set End after Start")
    return {
        "n_grid": int(s.n_grid),
        "domain_min": bounds[0] if bounds else None,
        "domain_max": bounds[1] if bounds else None,
        "fps": interactions.scene_fps(scene),
        "n_frames": scene.frame_end - scene.frame_start + 1,
        "frame_start": scene.frame_start,
        "gravity": gravity,
        "material_model": s.material_model,
        "walls": {"kind": s.walls_kind, "friction": float(s.walls_friction)},
        "ground": ({"height": float(s.ground_height), "kind": s.ground_kind, "friction": float(s.ground_friction)}
                   if s.use_ground else None),
        "fill": fill_settings(s),
        "pokes": pokes,
        "winds": winds,
        "colliders": colliders,
        "damping": float(s.damping),
        "substep_dt": float(s.substep_dt) if s.substep_dt > 0 else None,
    }


def _prefs():
    from ..preferences import get_prefs

    return get_prefs()


def estimation_device(context=None) -> str:
    """'cpu' or 'cuda': the preference, or for Auto what Check Backend last found (CPU until checked)."""
    prefs = _prefs()
    if prefs is None:
        return "cpu"
    if prefs.device in ("cpu", "cuda"):
        return prefs.device
    return "cuda" if prefs.found_device == "cuda" else "cpu"


def device_guidance() -> tuple[str, str, str]:
    """(what device the estimator will use, one line on why, the prior that works best there)."""
    prefs = _prefs()
    device = estimation_device()
    found = prefs.found_device if prefs else "unknown"
    models = set(filter(None, (prefs.found_models if prefs else "").split(",")))
    if device == "cpu":
        where = "CPU" + (" (no GPU found)" if found == "cpu" else " (not checked: Preferences > Check Backend)"
                         if found == "unknown" and (not prefs or prefs.device == "auto") else "")
        return (f"Device: {where}", "Fit a reference video here; video models need a CUDA GPU with ~16 GB",
                "reference")
    gpu = prefs.found_gpu if prefs and prefs.found_gpu else "CUDA GPU"
    for prior, name in (("svd", "SVD"), ("modelscope", "ModelScope")):
        if prior in models:
            return f"Device: {gpu}", f"{name} weights found: a video model can judge the motion", prior
    return (f"Device: {gpu}", "No video-model weights found (see Check Backend): fit a reference video, "
            "or download SVD or ModelScope", "reference")


def estimation_size(obj, prior: str | None = None) -> tuple[int, int]:
    """(long side in px, max particles) the estimator will use: the panel's values or the device's defaults."""
    s, device = obj.splat_physics, estimation_device()
    return (budget.effective_long_side(s.estimate_resolution, device, prior or s.prior),
            budget.effective_max_particles(s.estimate_max_particles, device))


def estimate_settings(context, obj, check_prior: bool = True, **overrides) -> dict:
    """The estimate section (also the camera and frame counts a preview renders with)."""
    s, prefs = obj.splat_physics, _prefs()
    unknown = set(overrides) - set(protocol.ESTIMATE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown estimate setting(s): {', '.join(sorted(unknown))}")
    prior = overrides.get("prior", s.prior)
    model = ""
    if prior == "svd":
        model = prefs.svd_model if prefs else ""
    elif prior == "modelscope":
        model = prefs.modelscope_model if prefs else ""
    long_side, max_particles = estimation_size(obj, prior)
    est = {
        "prior": prior,
        "model": model,
        "max_particles": max_particles,
        "prompt": s.prompt,
        "reference_video": s.reference_video,
        "reference_fps": float(s.reference_fps) if s.reference_fps > 0 else None,
        "field": s.field,
        "estimate_density": bool(s.estimate_density),
        "learn_nu": bool(s.learn_nu),
        "iterations": int(s.iterations),
        "stop_rule": s.stop_rule,
        "stop_tolerance": float(s.stop_tolerance),
        "tolerance_decades": float(s.tolerance_decades),
    }
    est.update(overrides)
    est["reference_video"] = _absolute(est["reference_video"])
    if check_prior:
        _check_prior_inputs(est)
    if est.get("camera") is None:
        est["camera"] = camera_settings(context.scene, long_side=long_side)
    return est


def substeps_per_frame(obj, sim: dict) -> int:
    """The solver's substeps per frame for the object's stiffest, lightest material (CFL), or from substep_dt."""
    if sim.get("substep_dt"):
        return max(1, int(np.ceil(1.0 / (sim["fps"] * sim["substep_dt"]) - 1e-6)))
    lo, hi = _grid_box(obj, world_positions(obj))
    dx = float(np.max(np.asarray(hi) - np.asarray(lo))) / max(sim["n_grid"] - 6, 1)  # 3 padding cells a side
    mats = materials.material_arrays(obj, material_defaults(obj))
    return budget.substeps_per_frame(float(np.max(mats["youngs_modulus"])), float(np.max(mats["poisson_ratio"])),
                                     float(np.min(mats["density"])), dx, sim["fps"])


def estimate_projection(context, obj, est: dict | None = None, sim: dict | None = None,
                        spf: int | None = None) -> budget.Projection:
    """Memory and time of one estimation iteration for this object and these settings (backend.estimation.budget)."""
    est = est or estimate_settings(context, obj, check_prior=False)
    sim = sim or simulation_settings(context, obj)
    n_points = materials.point_count(obj)
    n = min(n_points, est["max_particles"]) if est["max_particles"] else n_points
    s = obj.splat_physics
    if s.fill_mode != "OFF" and s.fill_preview_count > 0:
        n += int(s.fill_preview_count * n / max(n_points, 1))
    spf = spf or substeps_per_frame(obj, sim)
    cam = est["camera"]
    return budget.project(n_particles=n, width=cam["width"], height=cam["height"],
                          frames=est.get("frames_per_group", 8) * est.get("boost_groups", 1),
                          substeps_per_frame=spf, n_grid=sim["n_grid"], prior=est["prior"],
                          device=estimation_device())


def panel_projection(context, obj) -> tuple[budget.Projection, int, int, int]:
    """(projection, particles, width, height) for the panel, from cheap readouts only (no frame change, no
    point reads): the stiffest value is the heat map's maximum or the default. The run itself checks exactly."""
    s, scene = obj.splat_physics, context.scene
    long_side, max_particles = estimation_size(obj)
    width, height = budget.capped_size(*render_size(scene), long_side)
    est = {"max_particles": max_particles, "camera": {"width": width, "height": height}, "prior": s.prior,
           "frames_per_group": protocol.ESTIMATE_DEFAULTS["frames_per_group"],
           "boost_groups": protocol.ESTIMATE_DEFAULTS["boost_groups"]}
    sim = {"n_grid": s.n_grid, "fps": interactions.scene_fps(scene), "substep_dt": s.substep_dt or None}
    bounds = domain_bounds(obj)
    side = float(np.max(np.subtract(bounds[1], bounds[0]))) if bounds else DOMAIN_MARGIN * max(obj.dimensions)
    E = max(s.youngs_modulus, s.heat_max_E if obj.data.attributes.get("youngs_modulus") else 0.0)
    if s.substep_dt > 0:
        spf = substeps_per_frame(obj, sim)
    else:
        spf = budget.substeps_per_frame(E, s.poisson_ratio, s.density, max(side, 1e-6) / max(s.n_grid - 6, 1),
                                        sim["fps"])
    n = min(materials.point_count(obj), max_particles) if max_particles else materials.point_count(obj)
    return estimate_projection(context, obj, est, sim, spf), n, width, height


def check_estimate_fits(context, obj, est: dict, sim: dict) -> budget.Projection:
    """Refuse (SetupError with the fix) an estimation whose iteration will not fit in free memory."""
    spf = substeps_per_frame(obj, sim)
    proj = estimate_projection(context, obj, est, sim, spf)
    limit = est.get("memory_limit_mb") or budget.available_memory_mb()
    if budget.refusal(proj, limit, "") is None:
        return proj
    cam = est["camera"]

    def project_at(n, w, h):
        return estimate_projection(context, obj, dict(est, max_particles=n, camera=dict(cam, width=w, height=h)),
                                   sim, spf)

    n = min(est["max_particles"] or materials.point_count(obj), materials.point_count(obj))
    fix = budget.fix_text(*budget.what_fits(project_at, n, cam["width"], cam["height"], limit),
                          "Max particles", "Resolution", "Estimate Materials panel")
    raise SetupError(budget.refusal(proj, limit, fix))


def _absolute(path: str) -> str:
    """A '//' path (relative to the .blend, as Blender's file browser writes it) made absolute for the backend,
    which runs in the job folder; other paths pass unchanged (absolute, or relative to the job folder)."""
    path = str(path or "").strip()
    if not path.startswith("//"):
        return path
    if not blend_saved():
        raise SetupError(f"'{path}' is relative to the .blend file ('//'), which is not saved yet. Save the "
                         ".blend first, or choose the video with an absolute path")
    return os.path.normpath(bpy.path.abspath(path))


def _check_prior_inputs(est: dict) -> None:
    """What the chosen prior needs from the artist (a prompt, a video), said before anything runs."""
    if est["prior"] == "modelscope" and not str(est["prompt"]).strip():
        raise SetupError("The text-to-video prior needs a prompt describing the motion "
                         "(e.g. 'a tulip swaying gently in the wind')")
    if est["prior"] in ("reference", "analytic"):
        ref = str(est["reference_video"])
        if not ref or not os.path.exists(ref):
            raise SetupError(f"The {est['prior']} prior needs a reference video; "
                             + ("choose one in the panel" if not ref else f"'{ref}' does not exist"))


# ---------------------------------------------------------------------------- job
def splat_scene_arrays(obj, positions=None) -> dict[str, np.ndarray]:
    """The splat part of scene.npz (world positions, colours, opacities, scales, rotations), float32."""
    positions = world_positions(obj) if positions is None else positions
    data = splats.splat_arrays(obj, world=True)
    arrays = {"positions": positions.astype(np.float32)}
    arrays.update({k: np.ascontiguousarray(data[k], dtype=np.float32) for k in SCENE_KEYS if k in data})
    if arrays.get("f_rest") is not None and arrays["f_rest"].shape[1] == 0:
        del arrays["f_rest"]
    return arrays


def scene_arrays(context, obj) -> dict[str, np.ndarray]:
    """The scene.npz arrays: world-space splats, materials, anchors, locks, material ids."""
    positions = world_positions(obj)
    arrays = splat_scene_arrays(obj, positions)
    arrays.update(materials.material_arrays(obj, material_defaults(obj)))
    lock = materials.lock_mask(obj)
    if lock is not None:
        arrays["material_lock"] = lock.astype(np.uint8)
    anchors = interactions.interaction_objects(context.scene, obj, "ANCHOR")
    if anchors:
        depsgraph = context.evaluated_depsgraph_get()
        arrays["anchor"] = interactions.anchor_mask(positions, anchors, depsgraph).astype(np.uint8)
    ids = materials.read_attr(obj, "material_id")
    if ids is not None and ids.dtype.kind == "i" and ids.ndim == 1:
        arrays["material_id"] = ids.astype(np.int32)
    try:
        protocol.validate_scene(arrays)
    except protocol.BadJob as exc:
        raise SetupError(f"'{obj.name}': {exc.message}") from None
    return arrays


def build_job(context, obj, command: str, simulation: dict | None = None, **estimate_opts) -> tuple[dict, dict]:
    """The job dict and scene arrays for ``command`` ('simulate', 'estimate' or 'preview') on ``obj``.

    ``simulation`` overrides simulation settings; keyword arguments override estimate settings.
    """
    if command not in protocol.COMMANDS:
        raise ValueError(f"command must be one of {protocol.COMMANDS}")
    context.view_layer.update()
    arrays = scene_arrays(context, obj)
    sim = simulation_settings(context, obj)
    sim.update(simulation or {})
    prefs = _prefs()
    sections = {"simulation": sim, "device": prefs.device if prefs else "auto", "label": obj.name}
    if command in ("estimate", "preview"):
        sections["estimate"] = estimate_settings(context, obj, check_prior=command == "estimate", **estimate_opts)
    job = protocol.default_job(command, **sections)
    return job, arrays


def write_job_folder(job_dir, job: dict, arrays: dict) -> Path:
    """Write job.json + scene.npz atomically and check them as the backend will.

    An existing scene.npz with exactly these arrays is left alone: the backend recognises its
    checkpoint by the scene file's bytes, and a rewritten .npz differs (zip timestamps) even when the
    arrays do not, which would throw away a resumable run.
    """
    job_dir = Path(job_dir)
    try:
        paths.check_writable_folder(job_dir, "job folder")
    except paths.PathProblem as exc:
        raise SetupError(str(exc)) from None
    scene_path = job_dir / job.get("scene", protocol.SCENE_FILE)
    try:
        protocol.write_job(job_dir, job, None if _same_arrays(scene_path, arrays) else arrays)
    except OSError as exc:  # e.g. the disk filled up while writing
        raise SetupError(f"Cannot write the job folder {job_dir}: {exc.strerror or exc}") from None
    try:
        protocol.read_job(job_dir)
    except protocol.BadJob as exc:
        raise SetupError(f"The job could not be written correctly: {exc.message}") from None
    return job_dir


def _same_arrays(path: Path, arrays: dict) -> bool:
    if not path.is_file():
        return False
    try:
        old = protocol.load_npz(path)
    except protocol.BadJob:
        return False
    return old.keys() == arrays.keys() and all(
        old[k].dtype == np.asarray(arrays[k]).dtype and np.array_equal(old[k], arrays[k]) for k in arrays)


def blend_saved() -> bool:
    return bool(bpy.data.filepath)


def job_dir_for(obj, command: str) -> Path:
    """//splat_jobs/<object>/<command> next to the .blend, or a temp folder for an unsaved file."""
    if blend_saved():
        root = Path(bpy.path.abspath(f"//{JOBS_DIR}"))
    else:
        root = Path(tempfile.gettempdir()) / JOBS_DIR / f"unsaved-{os.getpid()}"
    return root / paths.safe_folder_name(obj.name) / command
