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
import time

import numpy as np

from .. import look
from . import common

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


def read_pc2(path) -> tuple[float, np.ndarray]:
    """(start frame, (frames, N, 3) positions) of a PC2 file (for tests and tools)."""
    with open(path, "rb") as f:
        magic, version, n, start, _sampling, frames = HEADER.unpack(f.read(HEADER.size))
        if magic != MAGIC or version != 1:
            raise common.BakeError(f"{path} is not a PC2 file")
        data = np.fromfile(f, "<f4", count=frames * n * 3)
    return start, data.reshape(frames, n, 3)


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


def bake_pc2(obj, frames, cache_dir, *, resume: bool = True, progress=None) -> common.BakeInfo:
    """Bake positions of consecutive ``frames`` into <cache_dir>/cache.pc2 and add a Mesh Cache modifier."""
    t0 = time.perf_counter()
    n = common.point_count(obj)
    frames = common.collect_frames(frames)
    first, last = frames[0][0], frames[-1][0]
    if last - first + 1 != len(frames):
        raise common.BakeError(f"PC2 needs consecutive frames; got {len(frames)} frames from {first} to {last}")
    common.check_first_frame(frames, n, ("positions",))
    stage = common.Stage(cache_dir, common.manifest_for(TARGET, obj, n, frames), LAYOUT, resume)
    info = common.BakeInfo(TARGET, str(stage.final), "", first, last, n, len(frames))
    path = stage.dir / FILE_NAME
    size = HEADER.size + n * 12 * len(frames)
    if not (stage.resumed and path.is_file() and path.stat().st_size == size):
        with open(path, "wb") as f:
            write_header(f, n, first, len(frames))
            f.truncate(size)
    mw = obj.matrix_world.copy()
    with open(path, "r+b") as f:
        for i, (frame, data) in enumerate(frames):
            fp = common.fingerprint(data)
            if stage.done(frame, fp):
                info.frames_resumed += 1
            else:
                pos = common.world_to_local(mw, common.frame_arrays(data, n, ("positions",), frame))["positions"]
                f.seek(HEADER.size + i * n * 12)
                f.write(np.ascontiguousarray(pos, "<f4").tobytes())
                f.flush()
                os.fsync(f.fileno())
                stage.mark(frame, fp)
                info.frames_written += 1
            common.report_progress(progress, i + 1, len(frames), frame)
    final = stage.commit()
    info.path = common.blend_relative(final / FILE_NAME)
    info.bytes = stage.bytes
    common.finish_bake(obj, info, lambda: attach(obj, info.path, first))
    info.seconds = time.perf_counter() - t0
    return info
