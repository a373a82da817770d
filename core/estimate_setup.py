"""The estimate section of a job and what it will cost: device, resolution, particles, the prior's inputs.

The projection and the refusal of a run that will not fit use backend/estimation/budget.py, the backend's own model.
"""

from __future__ import annotations

import numpy as np

from ..backend import protocol
from ..backend.estimation import budget
from ..preferences import get_prefs
from . import interactions, materials
from .domain import DOMAIN_MARGIN, domain_bounds, grid_box
from .job_folder import absolute_input
from .errors import SetupError
from .job_camera import camera_settings, render_size
from .points import material_defaults, world_positions


def estimation_device(context=None) -> str:
    """'cpu' or 'cuda': the preference, or for Auto what Check Backend last found (CPU until checked)."""
    prefs = get_prefs()
    if prefs is None:
        return "cpu"
    if prefs.device in ("cpu", "cuda"):
        return prefs.device
    return "cuda" if prefs.found_device == "cuda" else "cpu"


def device_guidance() -> tuple[str, str, str]:
    """(what device the estimator will use, one line on why, the prior that works best there)."""
    prefs = get_prefs()
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


def estimate_settings(context, obj, **overrides) -> dict:
    """The estimate section (also the camera and frame counts a preview renders with). What the prior needs
    from the artist is checked on the whole job (job_folder.check_prior_needs)."""
    s, prefs = obj.splat_physics, get_prefs()
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
    est["reference_video"] = absolute_input(est["reference_video"])
    if est.get("camera") is None:
        est["camera"] = camera_settings(context.scene, long_side=long_side)
    return est


def substeps_per_frame(obj, sim: dict) -> int:
    """The solver's substeps per frame for the object's stiffest, lightest material (CFL), or from substep_dt."""
    if sim.get("substep_dt"):  # no CFL bound: the points need not be read
        return budget.substeps_from_dt(sim["fps"], sim["substep_dt"])
    lo, hi = grid_box(obj, world_positions(obj))
    mats = materials.material_arrays(obj, material_defaults(obj))
    return budget.planned_substeps(float(np.max(mats["youngs_modulus"])), float(np.max(mats["poisson_ratio"])),
                                   float(np.min(mats["density"])), float(np.max(hi - lo)), sim["n_grid"],
                                   sim["fps"])


def sampled(est: dict, sim: dict) -> dict:
    """The simulation settings at the rate estimation samples the motion at (protocol.sampling_fps); a clip
    without a stated rate (Reference FPS) is projected at the scene's (the run reads the file's own)."""
    return protocol.sampled_simulation(sim, protocol.sampling_fps(est["prior"], sim["fps"], est.get("reference_fps")))


def estimate_projection(context, obj, est: dict, sim: dict, spf: int | None = None) -> budget.Projection:
    """Memory and time of one estimation iteration for this object and these settings (backend.estimation.budget).
    spf: substeps per sampled frame (default: from the object's materials, substeps_per_frame(obj, sampled(...)))."""
    n_points = materials.point_count(obj)
    n = min(n_points, est["max_particles"]) if est["max_particles"] else n_points
    s = obj.splat_physics
    if s.fill_mode != "OFF" and s.fill_preview_count > 0:
        n += int(s.fill_preview_count * n / max(n_points, 1))
    spf = spf or substeps_per_frame(obj, sampled(est, sim))
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
           "boost_groups": protocol.ESTIMATE_DEFAULTS["boost_groups"],
           "reference_fps": s.reference_fps if s.reference_fps > 0 else None}
    sim = sampled(est, {"n_grid": s.n_grid, "fps": interactions.scene_fps(scene), "substep_dt": s.substep_dt or None})
    bounds = domain_bounds(obj)
    side = float(np.max(np.subtract(bounds[1], bounds[0]))) if bounds else DOMAIN_MARGIN * max(obj.dimensions)
    E = max(s.youngs_modulus, s.heat_max_E if obj.data.attributes.get("youngs_modulus") else 0.0)
    spf = budget.planned_substeps(E, s.poisson_ratio, s.density, side, s.n_grid, sim["fps"], sim["substep_dt"])
    n = min(materials.point_count(obj), max_particles) if max_particles else materials.point_count(obj)
    return estimate_projection(context, obj, est, sim, spf), n, width, height


def check_estimate_fits(context, obj, est: dict, sim: dict) -> budget.Projection:
    """Refuse (SetupError with the fix) an estimation whose iteration will not fit in free memory."""
    spf = substeps_per_frame(obj, sampled(est, sim))
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
