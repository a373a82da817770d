"""PC2 point cache bake, played by a Mesh Cache modifier (positions only; works in every Blender).

File (little-endian): b"POINTCACHE2\\0", int32 version = 1, int32 vertex count, float32 start frame,
float32 sampling (1 = one sample per frame), int32 frame count, then frames x vertices x float32[3],
in the object's local space. The frames must be consecutive. Rotations and scales stay static: the
splat look keeps the imported rot_*/scale_* (a moving blob, not a deforming one).

Resume: the staging file is allocated at full size up front and each frame is written in place,
flushed to disk, then marked done; a rerun skips marked frames.
"""

from __future__ import annotations

import os
import re
import struct

import numpy as np

from .. import look
from . import common
from .writer import StagedWriter

TARGET = "pc2"
MODIFIER = "Splat PC2"
FILE_NAME = "cache.pc2"
LAYOUT = re.compile(re.escape(FILE_NAME))  # the only file a pc2 bake replaces or frees in its folder
MAGIC = b"POINTCACHE2\0"
HEADER = struct.Struct("<12siiffi")


def estimate_size(n_points: int, n_frames: int) -> int:
    return HEADER.size + int(n_points) * int(n_frames) * 12 + 512


def write_header(f, n_points: int, start: float, n_frames: int) -> None:
    f.write(HEADER.pack(MAGIC, 1, n_points, float(start), 1.0, n_frames))


def is_reader_modifier(mod) -> bool:
    return mod.type == "MESH_CACHE" and mod.name.startswith(MODIFIER)


def attach(obj, path: str, frame_start: int):
    detach(obj)
    mod = obj.modifiers.new(MODIFIER, "MESH_CACHE")
    mod.cache_format = "PC2"
    mod.filepath = path
    mod.time_mode = "FRAME"
    mod.play_mode = "SCENE"
    mod.frame_start = float(frame_start)
    mod.frame_scale = 1.0
    mod.forward_axis, mod.up_axis = "POS_Y", "POS_Z"  # identity: the file is in Blender's own axes
    idx = list(obj.modifiers).index(mod)
    if idx:
        obj.modifiers.move(idx, 0)  # deform the points before the look instances them
    look.apply_splat_look(obj, source="attributes")
    obj.update_tag()
    return mod


def detach(obj) -> None:
    for mod in [m for m in obj.modifiers if is_reader_modifier(m)]:
        obj.modifiers.remove(mod)


class PC2Writer(StagedWriter):
    """Positions of consecutive frames into one PC2 file, played by a Mesh Cache modifier."""

    TARGET = TARGET
    LAYOUT = LAYOUT
    estimate_size = staticmethod(estimate_size)
    detach = staticmethod(detach)

    def __init__(self, obj, n, frames, **options):
        super().__init__(obj, n, frames, **options)
        first, last = frames[0][0], frames[-1][0]
        if last - first + 1 != len(frames):
            raise common.BakeError(f"PC2 needs consecutive frames; got {len(frames)} frames from {first} to {last}")

    def begin(self, cache_dir, resume, info):
        super().begin(cache_dir, resume, info)
        # Allocated at full size up front, so each frame is written in place and a rerun keeps the marked ones.
        self.path = self.stage.dir / FILE_NAME
        size = HEADER.size + self.n * 12 * len(self.frames)
        if not (self.stage.resumed and self.path.is_file() and self.path.stat().st_size == size):
            with open(self.path, "wb") as f:
                write_header(f, self.n, self.frames[0][0], len(self.frames))
                f.truncate(size)

    def write_frame(self, index, frame, arrays):
        with open(self.path, "r+b") as f:
            f.seek(HEADER.size + index * self.n * 12)
            f.write(np.ascontiguousarray(arrays["positions"], "<f4").tobytes())
            f.flush()
            os.fsync(f.fileno())  # on disk before the frame is marked done

    def stored_path(self, final):
        return final / FILE_NAME

    def attach(self, info):
        attach(self.obj, info.path, info.frame_start)
