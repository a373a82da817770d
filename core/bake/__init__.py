"""Bake writers: simulated frames -> caches that Blender plays back without the add-on.

Targets (protocol.BAKE_TARGETS; each module has a writer class, writer.py's interface, registered in
targets.py and driven by the one loop in loop.py):

* gn_cache      Blender's geometry-nodes bake layout read by a Bake node (default; positions, rotations, scales)
* ply_sequence  one 3DGS PLY per frame read by the Import PLY node (standard files other tools read too)
* pc2           a PC2 point cache read by a Mesh Cache modifier (positions only)
* shape_keys    one shape key per frame, keyed 0/1/0 (small objects only; stored inside the .blend)

Frames are (frame_number, {positions, rotations, scales}) pairs in world space; ``frames_from_dir`` reads
a job's out/frames folder lazily. Caches go to ``default_cache_dir(obj, target)`` =
//splat_cache/<object>/<target> (or a folder the artist picks) and are referenced with '//'-relative
paths. A bake writes only into a folder it owns and replaces or frees only the files it wrote there
(folder.py); baking another target keeps the earlier target's cache.
"""

from __future__ import annotations

import os

from .. import look, paths
from . import common, folder
from .common import BakeError, BakeInfo, bake_record, default_cache_dir, frames_from_dir
from .loop import detach_all, run_bake
from .targets import WRITERS, writer_for


def estimate_bake_size(target: str, n_points: int, n_frames: int) -> int:
    """Projected size in bytes of a bake (on disk; for shape keys: inside the .blend)."""
    writer = writer_for(target)
    if n_points < 0 or n_frames < 0:
        raise BakeError("point and frame counts must not be negative")
    return writer.estimate_size(int(n_points), int(n_frames))


def bake(obj, frames, target: str = "gn_cache", cache_dir: str | None = None, **options) -> BakeInfo:
    """Bake with any target; cache_dir defaults to //splat_cache/<object>/<target> (the .blend must be saved).

    ``options``: resume (default True), progress (a callback), and force for shape keys (see loop.run_bake)."""
    writer_for(target)
    if cache_dir is None and target != "shape_keys":
        cache_dir = default_cache_dir(obj, target)
    return run_bake(obj, frames, target, cache_dir, **options)


def check_cache_dir(cache_dir) -> str:
    """Refuse, before anything runs, a bake folder that is a file, holds someone else's files or is read-only."""
    return str(folder.check_folder(cache_dir))


def free_bake(obj, delete_files: bool = True) -> bool:
    """Remove the object's bake: its reader modifiers or shape keys and (optionally) its cache files.

    The static splat look is restored. Only files a bake wrote are deleted (the current bake's and those
    of earlier targets kept on disk); anything else in the cache folders stays. Returns True if there
    was a bake.
    """
    record = bake_record(obj)
    caches = [(t, common.resolve(d)) for t, d in common.record_caches(record) if t in WRITERS and t != "shape_keys"]
    if delete_files:  # a folder we cannot write is said before anything changes
        for _target, path in caches:
            if folder.is_owned(path):
                try:
                    paths.check_writable_folder(path, "bake folder")
                except paths.PathProblem as exc:
                    raise BakeError(f"Cannot free the bake: {exc}") from None
    detach_all(obj)
    if delete_files:
        for target, path in caches:
            folder.release(path, target, WRITERS[target].LAYOUT)
            common.remove_legacy_staging(path)
        for _target, path in caches:  # //splat_cache/<object>/ left empty: our layout, so tidy it away
            parent = os.path.dirname(path)
            if os.path.basename(os.path.dirname(parent)) == common.CACHE_ROOT:
                for level in (parent, os.path.dirname(parent)):
                    try:
                        os.rmdir(level)
                    except OSError:  # not empty, or already gone
                        break
    common.clear_bake_record(obj)
    if look.look_modifier(obj) is not None:
        look.apply_splat_look(obj, source="attributes")
    return record is not None


__all__ = ["BakeError", "BakeInfo", "bake", "check_cache_dir", "estimate_bake_size", "free_bake", "frames_from_dir",
           "default_cache_dir", "bake_record"]
