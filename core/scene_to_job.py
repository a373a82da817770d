"""From the Blender scene to a job folder: the simulation section, the job, and writing it.

``build_job(context, obj, command)`` gathers everything the artist set up into the contract's
form (backend/protocol.py): the scene arrays (points.py), the simulation section (here) and the
estimate section (estimate_setup.py, with the camera of job_camera.py). ``write_job_folder`` writes
it with protocol.write_job. The domain box (domain.py) and the panel's readouts (readouts.py) are
set up by ``convert_to_particles``.

Nothing here changes the scene except ``convert_to_particles`` (which adds the domain empty) and
the temporary frame changes needed to sample animated colliders and the camera (restored after).
"""

from __future__ import annotations

from ..backend import protocol
from ..preferences import chosen_device
from . import interactions
from .domain import domain_bounds, make_domain
from .errors import SetupError
from .estimate_setup import device_guidance, estimate_settings
from .job_folder import check_prior_needs, job_dir_for
from .points import scene_arrays, world_positions
from .readouts import fill_settings, update_readouts


def convert_to_particles(context, obj):
    """Mark ``obj`` as MPM particles and give it a domain box; checks the points before changing anything."""
    positions = world_positions(obj)
    settings = obj.splat_physics
    if settings.domain is None or settings.domain.name not in context.scene.objects:
        settings.domain = make_domain(context, obj, positions)
    if not settings.enabled:  # first conversion: start from the prior that works on this machine
        settings.prior = device_guidance()[2]
    settings.enabled = True
    context.view_layer.update()
    update_readouts(obj)
    return settings.domain


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
    sections = {"simulation": sim, "device": chosen_device(context), "label": obj.name}
    if command in ("estimate", "preview"):
        sections["estimate"] = estimate_settings(context, obj, **estimate_opts)
    job = protocol.default_job(command, **sections)
    if command == "estimate":
        check_prior_needs(job, job_dir_for(obj, command))
    return job, arrays
