"""Geometry-nodes cache bake: per-frame point clouds in Blender's own bake layout, read by a Bake node.

Layout (version 3, identical on Blender 4.2, 4.5 and 5.0; checked against what Blender itself writes):

    <cache>/meta/<frame>.json   {"version": 3, "items": {"<bake item id>": {"name", "type": "GEOMETRY",
                                  "data": {"pointcloud": {"num_points", "materials": [], "attributes": [...]}}}}}
    <cache>/blobs/<frame>.blob  the attribute arrays back to back, raw little-endian
    <frame> = "%011.5f" % frame with '.' -> '_', e.g. 00001_00000

Each attribute entry is {"name", "domain": "POINT", "type", "data": {"name": blob, "start", "size"}}.
A frame holds three point attributes, in the object's local space: position (FLOAT_VECTOR),
rotations (QUATERNION, wxyz) and scales (FLOAT_VECTOR, linear): 40 bytes per point and frame.
Colour, opacity and SH are not repeated per frame: the reader group samples the baked points by
index onto the object's own points, which keep them.

Reader: node group ``SPLAT_BakeCache`` on a modifier "Splat Bake" placed before the splat look; its
Bake node is set to ANIMATION mode with a custom ('//'-relative) path and the custom frame range, so
the .blend renders on a machine without the add-on. When the baked point count does not match the
object (a missing frame, an edited mesh), the object's own points pass through unchanged.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np

from ...backend import protocol
from .. import look
from . import common
from .writer import StagedWriter

TARGET = "gn_cache"
# The files write_frame makes: the only files a gn_cache bake replaces or frees in its folder.
LAYOUT = re.compile(r"(meta/-?\d+_\d{5}\.json|blobs/-?\d+_\d{5}\.blob)")
READER_GROUP = "SPLAT_BakeCache"
READER_MODIFIER = "Splat Bake"
READER_VERSION = 1
ROLE = "bake_gn_cache"
META_VERSION = 3
BYTES_PER_POINT = 12 + 16 + 12
JSON_BYTES = 500  # one frame's meta file


def frame_key(frame: float) -> str:
    """Blender's file stem for a frame: '%011.5f' with '.' replaced by '_'."""
    return f"{float(frame):011.5f}".replace(".", "_")


def estimate_size(n_points: int, n_frames: int) -> int:
    return int(n_frames) * (int(n_points) * BYTES_PER_POINT + JSON_BYTES) + 512


# ------------------------------------------------------------------------------------------ reader group
def reader_group():
    tree = look.group_ready(READER_GROUP, ROLE, READER_VERSION)
    if tree is not None:
        return tree
    tree = look.new_group(READER_GROUP, ROLE, READER_VERSION)
    b = look.NodeBuilder(tree)
    geo = b.out(b.node("NodeGroupInput"), "Geometry")
    bake = b.node("GeometryNodeBake")
    if len(bake.bake_items) == 0:  # 5.0 creates the node without items
        bake.bake_items.new("GEOMETRY", "Geometry")
    baked = b.out(bake, 0)
    n_baked = b.out(b.node("GeometryNodeAttributeDomainSize", {0: baked}, component="POINTCLOUD"), "Point Count")
    n_own = b.out(b.node("GeometryNodeAttributeDomainSize", {0: geo}, component="MESH"), "Point Count")
    same = b.out(b.node("FunctionNodeCompare", {"A_INT": n_baked, "B_INT": n_own}, data_type="INT",
                        operation="EQUAL"))
    pos = b.sample_index(baked, b.out(b.node("GeometryNodeInputPosition")), "FLOAT_VECTOR")
    moved = b.out(b.node("GeometryNodeSetPosition", {"Geometry": geo, "Position": pos}))
    rot = b.sample_index(baked, b.named("rotations", "QUATERNION")[0], "QUATERNION")
    moved = b.store(moved, "rotations", rot, "QUATERNION")
    scl = b.sample_index(baked, b.named("scales", "FLOAT_VECTOR")[0], "FLOAT_VECTOR")
    moved = b.store(moved, "scales", scl, "FLOAT_VECTOR")
    b.node("NodeGroupOutput", {"Geometry": b.switch("GEOMETRY", same, geo, moved)})
    return tree


def bake_item_key(tree) -> str:
    """The JSON key of the Bake node's geometry item: its socket identifier 'Item_<id>' -> '<id>'."""
    node = next(n for n in tree.nodes if n.bl_idname == "GeometryNodeBake")
    ident = node.inputs[0].identifier
    return ident.split("_", 1)[1] if ident.startswith("Item_") else "0"


def is_reader_modifier(mod) -> bool:
    return mod.type == "NODES" and mod.node_group is not None and mod.node_group.get(look.ROLE_KEY) == ROLE


def attach(obj, path: str, frame_start: int, frame_end: int):
    """Add the reader modifier (before the look) pointing at ``path`` and switch the look to the bake."""
    detach(obj)
    mod = obj.modifiers.new(READER_MODIFIER, "NODES")
    mod.node_group = reader_group()
    if len(mod.bakes) == 0:
        raise common.BakeError("the Bake node of the reader group did not register a bake on the modifier")
    bake = mod.bakes[0]
    bake.bake_target = "DISK"
    bake.bake_mode = "ANIMATION"
    bake.use_custom_path = True
    bake.directory = path
    bake.use_custom_simulation_frame_range = True
    bake.frame_start = frame_start
    bake.frame_end = frame_end
    look_mod = look.apply_splat_look(obj, source="bake")
    look.move_to_end(obj, look_mod)
    obj.update_tag()
    return mod


def detach(obj) -> None:
    for mod in [m for m in obj.modifiers if is_reader_modifier(m)]:
        obj.modifiers.remove(mod)


# ------------------------------------------------------------------------------------------ writer
def write_frame(folder, frame: int, key: str, positions, rotations, scales) -> int:
    """Write one frame (blob first, meta last: the meta file's presence means the frame is complete)."""
    stem = frame_key(frame)
    blob_name = f"{stem}.blob"
    blocks = (("position", "FLOAT_VECTOR", positions), ("rotations", "QUATERNION", rotations),
              ("scales", "FLOAT_VECTOR", scales))
    attributes, offset, parts = [], 0, []
    for name, dtype, arr in blocks:
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        attributes.append({"name": name, "domain": "POINT", "type": dtype,
                           "data": {"name": blob_name, "start": offset, "size": len(data)}})
        offset += len(data)
        parts.append(data)
    blob = b"".join(parts)
    protocol.atomic_write_bytes(os.path.join(folder, "blobs", blob_name), blob)
    meta = {"version": META_VERSION, "items": {key: {"name": "Geometry", "type": "GEOMETRY", "data": {
        "pointcloud": {"num_points": int(len(positions)), "materials": [], "attributes": attributes}}}}}
    text = json.dumps(meta, separators=(",", ":"))
    protocol.atomic_write_text(os.path.join(folder, "meta", f"{stem}.json"), text)
    return len(blob) + len(text)


class GNCacheWriter(StagedWriter):
    """Frames into a GN cache folder (object-local), played by the reader modifier."""

    TARGET = TARGET
    KEYS = ("positions", "rotations", "scales")
    LAYOUT = LAYOUT
    estimate_size = staticmethod(estimate_size)
    detach = staticmethod(detach)

    def begin(self, cache_dir, resume, info):
        self.key = bake_item_key(reader_group())
        super().begin(cache_dir, resume, info)

    def manifest(self) -> dict:
        return dict(super().manifest(), item_key=self.key)

    def write_frame(self, index, frame, arrays):
        write_frame(self.stage.dir, frame, self.key, arrays["positions"], arrays["rotations"], arrays["scales"])

    def attach(self, info):
        attach(self.obj, info.path, info.frame_start, info.frame_end)
