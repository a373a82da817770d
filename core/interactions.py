"""Interaction objects: anchors, pokes, wind and colliders, and their translation into job settings.

Each is an ordinary object tagged with ``obj.splat_role.role``:

* ANCHOR   a CUBE empty (inside = |local x|, |y|, |z| <= display size) or a closed mesh (ray parity).
* POKE     a SINGLE_ARROW empty. It pushes along its arrow, the local +Z axis; its empty display size
           (times the largest world scale) is the radius of the pushed region around its origin.
* WIND     a SINGLE_ARROW empty; the wind blows along its local +Z axis everywhere in the domain.
* COLLIDER a CUBE empty; an axis-aligned box (rotation is ignored) whose centre may be animated.

Frame windows become seconds with the scene's frame rate: t = (frame - scene.frame_start) / fps, so
scene.frame_start is t = 0, the rest state the simulation starts from.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Vector

_DISPLAY = {  # role -> (empty display type, default display size, name)
    "ANCHOR": ("CUBE", 0.2, "Splat Anchor"),
    "POKE": ("SINGLE_ARROW", 0.1, "Splat Poke"),
    "WIND": ("SINGLE_ARROW", 1.0, "Splat Wind"),
    "COLLIDER": ("CUBE", 0.2, "Splat Collider"),
}
ROLES = tuple(_DISPLAY)


def scene_fps(scene) -> float:
    return scene.render.fps / scene.render.fps_base


def frame_to_seconds(frame: float, scene) -> float:
    """Seconds since the simulation start (scene.frame_start), never negative."""
    return max(0.0, (frame - scene.frame_start) / scene_fps(scene))


def add_interaction(context, role: str, target=None, location=None, size: float | None = None):
    """Create an empty for ``role`` at ``location`` (default: the 3D cursor), linked to the active collection."""
    if role not in _DISPLAY:
        raise ValueError(f"unknown interaction role {role!r}; expected one of {', '.join(_DISPLAY)}")
    display, default_size, name = _DISPLAY[role]
    empty = bpy.data.objects.new(name, None)
    empty.empty_display_type = display
    empty.empty_display_size = default_size if size is None else size
    empty.location = context.scene.cursor.location if location is None else Vector(location)
    empty.show_in_front = True
    empty.hide_render = True
    context.collection.objects.link(empty)
    settings = empty.splat_role
    settings.role = role
    settings.target = target
    scene = context.scene
    settings.start_frame = scene.frame_start
    settings.end_frame = min(scene.frame_end, scene.frame_start + max(1, int(round(scene_fps(scene) / 4))))
    if role == "WIND":
        settings.strength = 2.0
        settings.use_end = False
    return empty


# ---------------------------------------------------------------------------- sized from the object
# Fractions of the object's largest extent (so a 0.2 m plant and a 20 m tree get the same setup).
ANCHOR_BAND = 0.1  # an anchor holds the lowest tenth of the object's height
POKE_RADIUS = 0.15
POKE_STRENGTH_PER_M = 25.0  # m/s^2 per metre of object: the same push relative to the object's size
WIND_STRENGTH_PER_M = 10.0
COLLIDER_HALF = 0.15


def placement(role: str, points: np.ndarray) -> dict:
    """Where a new ``role`` helper goes for an object with these world points, and how big it is.

    Returns {"location", "scale" (xyz, the box's half extents for display size 1) or "size",
    "direction" (the arrow, world), "strength"}.
    """
    if role not in _DISPLAY:
        raise ValueError(f"unknown interaction role {role!r}; expected one of {', '.join(_DISPLAY)}")
    pts = np.asarray(points, dtype=np.float64)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    extent = hi - lo
    size = max(float(extent.max()), 1e-3)
    centre = (lo + hi) / 2
    margin = 0.02 * size
    if role == "ANCHOR":
        top = lo[2] + ANCHOR_BAND * extent[2]
        half = np.array([extent[0] / 2 + margin, extent[1] / 2 + margin, (top - lo[2]) / 2 + margin])
        return {"location": [centre[0], centre[1], (lo[2] + top) / 2], "scale": half.tolist()}
    if role == "POKE":
        # A surface point near the top, on the front (-Y, where Blender's front view looks from), pushed
        # horizontally towards the middle of the top band: the poke faces the object.
        band = pts[pts[:, 2] >= hi[2] - ANCHOR_BAND * extent[2]]
        middle = band.mean(axis=0)
        front = band[np.argmin(band[:, 1])]
        direction = np.array([middle[0] - front[0], middle[1] - front[1], 0.0])
        if np.linalg.norm(direction) < 1e-9 * size:
            direction = np.array([0.0, 1.0, 0.0])
        return {"location": front.tolist(), "size": POKE_RADIUS * size,
                "direction": (direction / np.linalg.norm(direction)).tolist(), "strength": POKE_STRENGTH_PER_M * size}
    if role == "WIND":
        return {"location": [lo[0] - 0.5 * size, centre[1], centre[2]], "size": 0.5 * size,
                "direction": [1.0, 0.0, 0.0], "strength": WIND_STRENGTH_PER_M * size}
    half = COLLIDER_HALF * size
    return {"location": [hi[0] + half + margin, centre[1], lo[2] + half], "size": half}


def add_sized_interaction(context, role: str, obj, points: np.ndarray):
    """Add a ``role`` helper for ``obj`` placed and sized from its world points (see ``placement``)."""
    place = placement(role, points)
    empty = add_interaction(context, role, target=obj, location=place["location"], size=place.get("size", 1.0))
    if "scale" in place:
        empty.scale = place["scale"]
    if "direction" in place:
        # Its arrow is local +Z; Euler angles (the default rotation mode) so the artist can turn it as usual.
        empty.rotation_euler = Vector(place["direction"]).to_track_quat("Z", "Y").to_euler()
    if "strength" in place:
        empty.splat_role.strength = place["strength"]
    return empty


def tag_anchor_volume(obj, target=None) -> None:
    """Turn a closed mesh into an anchor volume (drawn as wire, not rendered)."""
    if obj.type != "MESH":
        raise ValueError(f"'{obj.name}' is not a mesh; an anchor volume must be a closed mesh")
    obj.splat_role.role = "ANCHOR"
    obj.splat_role.target = target
    obj.display_type = "WIRE"
    obj.hide_render = True


def interaction_objects(scene, target, role: str | None = None) -> list:
    """Enabled interaction objects of the scene acting on ``target`` (or on every object), sorted by name."""
    found = []
    for ob in scene.objects:
        s = getattr(ob, "splat_role", None)
        if s is None or s.role == "NONE" or not s.enabled or (role and s.role != role):
            continue
        if s.target is not None and s.target != target:
            continue
        found.append(ob)
    return sorted(found, key=lambda o: o.name)


# ---------------------------------------------------------------------------- anchors
def _to_local(points: np.ndarray, obj) -> np.ndarray:
    inv = np.array(obj.matrix_world.inverted_safe(), dtype=np.float64)
    return points @ inv[:3, :3].T + inv[:3, 3]


def inside_box(points: np.ndarray, empty) -> np.ndarray:
    """Points (world, (N,3)) inside a CUBE empty: the cube spans +-display size in its local space."""
    local = _to_local(np.asarray(points, dtype=np.float64), empty)
    return np.all(np.abs(local) <= empty.empty_display_size, axis=1)


# A direction that is unlikely to graze edges of axis-aligned meshes.
_RAY = Vector((0.3141, 0.2718, 0.9102)).normalized()


def inside_mesh(points: np.ndarray, mesh_obj, depsgraph=None) -> np.ndarray:
    """Points (world) inside a closed mesh, by ray parity in the mesh's local space.

    Only points inside the mesh's local bounding box are ray-cast, so large splats stay fast when
    the anchor volume is small.
    """
    local = _to_local(np.asarray(points, dtype=np.float64), mesh_obj)
    bounds = np.array([tuple(c) for c in mesh_obj.bound_box])
    lo, hi = bounds.min(axis=0), bounds.max(axis=0)
    candidates = np.flatnonzero(np.all((local >= lo) & (local <= hi), axis=1))
    mask = np.zeros(len(local), dtype=bool)
    if len(candidates) == 0 or not mesh_obj.data.polygons:
        return mask
    eps = 1e-6 * max(1e-9, float(np.max(hi - lo)))
    for i in candidates:
        origin = Vector(local[i])
        hits = 0
        for _ in range(1000):  # bounded: a mesh with more crossings than this along one ray is pathological
            hit, loc, _normal, _index = mesh_obj.ray_cast(origin, _RAY, depsgraph=depsgraph)
            if not hit:
                break
            hits += 1
            origin = loc + _RAY * eps
        mask[i] = hits % 2 == 1
    return mask


def anchor_mask(points: np.ndarray, anchors, depsgraph=None) -> np.ndarray:
    """True for points held by any anchor object (CUBE empties and closed meshes)."""
    mask = np.zeros(len(points), dtype=bool)
    for ob in anchors:
        if ob.type == "EMPTY":
            mask |= inside_box(points, ob)
        elif ob.type == "MESH":
            mask |= inside_mesh(points, ob, depsgraph)
    return mask


# ---------------------------------------------------------------------------- forces
def world_axis(obj) -> list[float]:
    """The object's local +Z axis in world space, unit length."""
    axis = obj.matrix_world.to_3x3() @ Vector((0.0, 0.0, 1.0))
    if axis.length < 1e-12:
        raise ValueError(f"'{obj.name}' has zero scale, so its arrow has no direction")
    return list(axis.normalized())


def _window(settings, scene) -> tuple[float, float | None]:
    start = frame_to_seconds(settings.start_frame, scene)
    if not settings.use_end:
        return start, None
    return start, max(start, frame_to_seconds(settings.end_frame, scene))


def poke_settings(obj, scene) -> dict:
    s = obj.splat_role
    start, end = _window(s, scene)
    scale = max(abs(v) for v in obj.matrix_world.to_scale())
    return {
        "center": list(obj.matrix_world.translation),
        "radius": max(1e-6, obj.empty_display_size * scale),
        "direction": world_axis(obj),
        "strength": float(s.strength),
        "start": start,
        "end": end,
    }


def wind_settings(obj, scene) -> dict:
    s = obj.splat_role
    start, end = _window(s, scene)
    return {
        "direction": world_axis(obj),
        "strength": float(s.strength),
        "gust_frequency": float(s.gust_frequency),
        "gust_amplitude": float(s.gust_amplitude),
        "start": start,
        "end": end,
    }


def collider_settings(colliders, scene) -> list[dict]:
    """Sample each collider box's world centre at every frame of the scene range (t = 0 at frame_start).

    Half extents are taken at the first frame: display size times the world scale per axis.
    """
    if not colliders:
        return []
    frames = list(range(scene.frame_start, scene.frame_end + 1))
    tracks = {ob.name: [] for ob in colliders}
    extents = {}
    current = scene.frame_current, scene.frame_subframe
    try:
        for f in frames:
            scene.frame_set(f)
            for ob in colliders:
                tracks[ob.name].append(list(ob.matrix_world.translation))
                if ob.name not in extents:
                    scale = ob.matrix_world.to_scale()
                    extents[ob.name] = [abs(v) * ob.empty_display_size for v in scale]
    finally:
        scene.frame_set(current[0], subframe=current[1])
    times = [frame_to_seconds(f, scene) for f in frames]
    out = []
    for ob in colliders:
        out.append({
            "times": times,
            "centers": tracks[ob.name],
            "half_extents": extents[ob.name],
            "kind": ob.splat_role.kind,
            "friction": float(ob.splat_role.friction),
        })
    return out


def describe(obj, scene) -> str:
    """One line for the panel: what this interaction does."""
    s = obj.splat_role
    if s.role == "POKE":
        d = poke_settings(obj, scene)
        end = "end" if d["end"] is None else f"{d['end']:.2f}s"
        return f"Poke r={d['radius']:.3g} m, {d['strength']:.3g} m/s², {d['start']:.2f}s–{end}"
    if s.role == "WIND":
        return f"Wind {s.strength:.3g} m/s², gusts {s.gust_frequency:.2g} Hz ×{s.gust_amplitude:.2f}"
    if s.role == "ANCHOR":
        return "Anchor box" if obj.type == "EMPTY" else "Anchor volume (mesh)"
    if s.role == "COLLIDER":
        return f"Collider ({s.kind})"
    return ""

