"""The simulation domain: the box object the artist sizes, its world bounds, and the grid box it gives."""

from __future__ import annotations

import bpy
import numpy as np

from .errors import SetupError

DOMAIN_MARGIN = 1.5  # default domain side / the object's largest extent


def make_domain(context, obj, positions):
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


def grid_box(obj, positions) -> tuple[np.ndarray, np.ndarray]:
    bounds = domain_bounds(obj)
    if bounds is not None:
        return np.array(bounds[0]), np.array(bounds[1])
    lo, hi = positions.min(axis=0), positions.max(axis=0)
    c, half = (lo + hi) / 2, 0.5 * DOMAIN_MARGIN * max(float(np.max(hi - lo)), 1e-3)
    return c - half, c + half
