"""The one bake loop: frames -> a target's writer -> the object's readers swapped in, the record kept."""

from __future__ import annotations

import os
import time

from . import common
from .targets import WRITERS, writer_for


def run_bake(obj, frames, target: str, cache_dir, *, resume: bool = True, progress=None,
             **options) -> common.BakeInfo:
    """Bake ``frames`` with ``target``'s writer into ``cache_dir`` (absolute; unused for shape keys).

    frames: iterable of (frame_number, {positions, rotations, scales} world space). The object keeps its
    transform: frames are stored in its local space. Frames already written by an interrupted run with the
    same source are skipped (``resume``). ``progress(done, total, frame)`` is called after each frame and
    may raise to stop. Raises BakeError on bad input, leaving any previous bake in place.
    """
    t0 = time.perf_counter()
    n = common.point_count(obj)
    frames = common.collect_frames(frames)
    writer = writer_for(target)(obj, n, frames, **options)
    common.check_first_frame(frames, n, writer.KEYS)
    info = common.BakeInfo(target, "", "", frames[0][0], frames[-1][0], n, len(frames))
    writer.begin(cache_dir, resume, info)
    mw = obj.matrix_world.copy()
    for i, (frame, data) in enumerate(frames):
        fp = common.fingerprint(data)
        if writer.done(frame, fp):
            info.frames_resumed += 1
        else:
            writer.write_frame(i, frame, common.world_to_local(mw, common.frame_arrays(data, n, writer.KEYS, frame)))
            writer.mark(frame, fp)
            info.frames_written += 1
        common.report_progress(progress, i + 1, len(frames), frame)
    writer.end(info)
    finish_bake(obj, info, lambda: writer.attach(info))
    info.seconds = time.perf_counter() - t0
    return info


def detach_all(obj, keep: tuple = ()) -> None:
    """Remove every bake reader (modifiers, committed shape keys) from the object, except the targets in
    ``keep``; files stay."""
    for target, writer in WRITERS.items():
        if target not in keep:
            writer.detach(obj)


def finish_bake(obj, info: common.BakeInfo, attach) -> None:
    """After a successful write: swap the readers to the new bake and record it. The previous bake stays:
    another target's cache files on disk, or its shape keys in the .blend (the new reader overrides them),
    listed in the record so Free Bake can delete them too."""
    previous = common.bake_record(obj)
    new_dir = os.path.normcase(os.path.abspath(info.cache_dir)) if info.cache_dir else ""
    kept, seen = [], set()
    for target, stored in common.record_caches(previous):
        key = (target, os.path.normcase(common.resolve(stored)))
        if key != (info.target, new_dir) and key not in seen:
            seen.add(key)
            kept.append({"target": target, "dir": stored})
    keep_keys = info.target != "shape_keys" and common.has_shape_key_bake(previous)
    if keep_keys:
        kept.append({"target": "shape_keys", "dir": ""})
    detach_all(obj, keep=("shape_keys",) if keep_keys else ())
    attach()
    common.set_bake_record(obj, info, kept)
