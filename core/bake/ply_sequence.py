"""PLY-sequence bake: one standard 3DGS PLY per frame, read by the Import PLY geometry node (4.5+).

Each file ``frame_XXXXXX.ply`` (six-digit frame number) is a complete SH-degree-0 3DGS splat file in
the object's local space (x y z f_dc_0..2 opacity scale_0..2 rot_0..3, float32: 56 bytes per point),
so other splat tools can open the sequence too. Each file is written atomically (the file's presence
means the frame is complete).

Reader: node group ``SPLAT_PlySequence`` on a modifier "Splat Bake": Scene Time frame, clamped to the
bake's range, padded to six digits (frame + 1000000 as text, first digit sliced off), joined into
<Directory>frame_XXXXXX.ply, loaded by Import PLY; positions, rot_0..3 and scale_0..2 are sampled by
index onto the object's own points (colour and SH stay on the object). The splat look then reads the
attributes as for static splats. A missing or mismatched file leaves the points at rest.
"""

from __future__ import annotations

import re

import numpy as np

from ...backend.io import ply
from .. import look, splat_objects
from . import common
from .writer import StagedWriter

TARGET = "ply_sequence"
LAYOUT = re.compile(r"frame_\d{6}\.ply")  # file_name(frame): the only files a sequence replaces or frees
READER_GROUP = "SPLAT_PlySequence"
READER_MODIFIER = "Splat Bake"
READER_VERSION = 1
ROLE = "bake_ply_sequence"
BYTES_PER_POINT = 14 * 4
HEADER_BYTES = 420
MAX_FRAME = 999999


def file_name(frame: int) -> str:
    return f"frame_{frame:06d}.ply"


def estimate_size(n_points: int, n_frames: int) -> int:
    return int(n_frames) * (int(n_points) * BYTES_PER_POINT + HEADER_BYTES) + 512


# ------------------------------------------------------------------------------------------ reader group
def reader_group():
    tree = look.group_ready(READER_GROUP, ROLE, READER_VERSION)
    if tree is not None:
        return tree
    inputs = {
        "Directory": ("NodeSocketString", "", None, None, "Folder of the frame_XXXXXX.ply files, ending in '/'"),
        "Start": ("NodeSocketInt", 1, None, None, "First baked frame"),
        "End": ("NodeSocketInt", 1, None, None, "Last baked frame"),
    }
    tree = look.new_group(READER_GROUP, ROLE, READER_VERSION, inputs)
    b = look.NodeBuilder(tree)
    gi = b.node("NodeGroupInput")
    geo = b.out(gi, "Geometry")
    frame = b.out(b.node("GeometryNodeInputSceneTime"), "Frame")
    frame = b.math("MINIMUM", b.math("MAXIMUM", frame, b.out(gi, "Start")), b.out(gi, "End"))
    frame = b.math("ADD", b.math("ROUND", frame), 1000000.0)
    text = b.out(b.node("FunctionNodeValueToString", {"Value": frame, "Decimals": 0}))
    padded = b.out(b.node("FunctionNodeSliceString", {"String": text, "Position": 1, "Length": 6}))
    join = b.node("GeometryNodeStringJoin", {"Delimiter": ""})
    prefix = b.node("FunctionNodeInputString", string="frame_")
    suffix = b.node("FunctionNodeInputString", string=".ply")
    # links into the multi-input arrive in reverse order: link the last part first
    for part in (b.out(suffix), padded, b.out(prefix), b.out(gi, "Directory")):
        b.link(part, b.inp(join, "Strings"))
    imported = b.out(b.node("GeometryNodeImportPLY", {"Path": b.out(join)}))
    n_file = b.out(b.node("GeometryNodeAttributeDomainSize", {0: imported}, component="MESH"), "Point Count")
    n_own = b.out(b.node("GeometryNodeAttributeDomainSize", {0: geo}, component="MESH"), "Point Count")
    same = b.out(b.node("FunctionNodeCompare", {"A_INT": n_file, "B_INT": n_own}, data_type="INT",
                        operation="EQUAL"))
    pos = b.sample_index(imported, b.out(b.node("GeometryNodeInputPosition")), "FLOAT_VECTOR")
    moved = b.out(b.node("GeometryNodeSetPosition", {"Geometry": geo, "Position": pos}))
    for name in splat_objects.ROT_NAMES + splat_objects.SCALE_NAMES:
        value = b.sample_index(imported, b.named(name)[0], "FLOAT")
        moved = b.store(moved, name, value, "FLOAT")
    b.node("NodeGroupOutput", {"Geometry": b.switch("GEOMETRY", same, geo, moved)})
    return tree


def is_reader_modifier(mod) -> bool:
    return mod.type == "NODES" and mod.node_group is not None and mod.node_group.get(look.ROLE_KEY) == ROLE


def attach(obj, path: str, frame_start: int, frame_end: int):
    detach(obj)
    mod = obj.modifiers.new(READER_MODIFIER, "NODES")
    mod.node_group = reader_group()
    folder = path if path.endswith(("/", "\\")) else path + "/"
    look.set_modifier_input(mod, "Directory", folder)
    look.set_modifier_input(mod, "Start", int(frame_start))
    look.set_modifier_input(mod, "End", int(frame_end))
    look_mod = look.apply_splat_look(obj, source="attributes")
    look.move_to_end(obj, look_mod)
    obj.update_tag()
    return mod


def detach(obj) -> None:
    for mod in [m for m in obj.modifiers if is_reader_modifier(m)]:
        obj.modifiers.remove(mod)


# ------------------------------------------------------------------------------------------ writer
class PlySequenceWriter(StagedWriter):
    """One 3DGS PLY per frame (object-local; colour and opacity from the object), read by Import PLY."""

    TARGET = TARGET
    KEYS = ("positions", "rotations", "scales")
    LAYOUT = LAYOUT
    estimate_size = staticmethod(estimate_size)
    detach = staticmethod(detach)

    def __init__(self, obj, n, frames, **options):
        super().__init__(obj, n, frames, **options)
        if frames[0][0] < 0 or frames[-1][0] > MAX_FRAME:
            raise common.BakeError(f"PLY sequences need frame numbers in 0..{MAX_FRAME}; got "
                                   f"{frames[0][0]}..{frames[-1][0]}")
        self.static = splat_objects.splat_arrays(obj, world=False)
        self.empty_rest = np.zeros((n, 0), np.float32)

    def done(self, frame, fp):
        return super().done(frame, fp) and (self.stage.dir / file_name(frame)).is_file()

    def write_frame(self, index, frame, arrays):
        log_scale = np.log(np.maximum(arrays["scales"], 1e-30)).astype(np.float32)
        splats = ply.Splats(arrays["positions"], self.static["f_dc"], self.empty_rest, self.static["opacity"],
                            log_scale, arrays["rotations"], comments=[f"splat_physics frame {frame}"])
        ply.write_splats(self.stage.dir / file_name(frame), splats)

    def attach(self, info):
        attach(self.obj, info.path, info.frame_start, info.frame_end)
