"""The object's points as the job's scene.npz holds them: world positions, splats, materials, anchors, locks."""

from __future__ import annotations

import numpy as np

from ..backend import protocol
from . import interactions, materials, splat_objects
from .errors import SetupError

SCENE_KEYS = ("f_dc", "f_rest", "opacity", "scale", "rotation")


def world_positions(obj) -> np.ndarray:
    """The object's points in world space, checked: at least one, all finite."""
    if obj is None:
        raise SetupError("Select the splat object to simulate first")
    if obj.type != "MESH":
        raise SetupError(f"'{obj.name}' is a {obj.type.lower()} object; splat physics needs a mesh of points "
                         "(import a .ply splat, or pick a mesh)")
    local = splat_objects.local_positions(obj.data)
    if len(local) == 0:
        raise SetupError(f"'{obj.name}' has no points to simulate. Import a splat .ply or pick a mesh with vertices")
    problem = splat_objects.invalid_positions(local, f"'{obj.name}'")
    if problem:
        raise SetupError(f"{problem}. Delete them (or re-import the file) and try again")
    mw = np.array(obj.matrix_world, dtype=np.float64)
    return local.astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]


def material_defaults(obj) -> dict[str, float]:
    s = obj.splat_physics
    return {"youngs_modulus": s.youngs_modulus, "poisson_ratio": s.poisson_ratio, "density": s.density}


def splat_scene_arrays(obj, positions=None) -> dict[str, np.ndarray]:
    """The splat part of scene.npz (world positions, colours, opacities, scales, rotations), float32."""
    positions = world_positions(obj) if positions is None else positions
    data = splat_objects.splat_arrays(obj, world=True)
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
