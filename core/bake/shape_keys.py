"""Shape-key bake: one shape key per frame, keyed 0/1/0, stored inside the .blend (small objects only).

Every key stores all N positions (12 bytes each) in the .blend, so the size grows as points x frames:
above WARN_POINT_FRAMES the bake warns, above LIMIT_POINT_FRAMES it refuses unless ``force=True``.
Positions only, in local space; rotations and scales stay static, as for PC2.

Keys being written are named ``splat_new_fXXXXXX`` (a rerun resumes them: each key's source
fingerprint is kept on the shape-key datablock); when all are written, the previous bake's keys
``splat_fXXXXXX`` are removed, the new ones renamed, and the action ``SPLAT_ShapeKeys`` keys each one
to 1 on its frame and 0 on the neighbouring frames (the first and last keys hold outside the range).
"""

from __future__ import annotations

import json

import bpy
import numpy as np

from .. import look
from . import common
from .writer import Writer

TARGET = "shape_keys"
KEY_PREFIX = "splat_f"
NEW_PREFIX = "splat_new_f"
ACTION_NAME = "SPLAT_ShapeKeys"
PROGRESS_PROP = "splat_progress"
ADDED_BASIS_PROP = "splat_added_basis"
WARN_POINT_FRAMES = 2_000_000  # 24 MB of positions in the .blend
LIMIT_POINT_FRAMES = 50_000_000  # 600 MB: refuse unless forced


def estimate_size(n_points: int, n_frames: int) -> int:
    return int(n_points) * 12 * (int(n_frames) + 1) + int(n_frames) * 400


def _key_name(prefix: str, frame: int) -> str:
    return f"{prefix}{frame:06d}"


def _frame_of(name: str, prefix: str):
    rest = name[len(prefix):]
    return int(rest) if name.startswith(prefix) and rest.lstrip("-").isdigit() else None


def detach(obj) -> None:
    """Remove committed bake keys and their action; keys of a bake in progress stay for resuming."""
    if obj.type != "MESH" or obj.data.shape_keys is None:
        return
    key = obj.data.shape_keys
    ad = key.animation_data
    if ad is not None and ad.action is not None and ad.action.name.startswith(ACTION_NAME):
        action = ad.action
        ad.action = None
        if action.users == 0:
            bpy.data.actions.remove(action)
    for kb in [kb for kb in key.key_blocks if _frame_of(kb.name, KEY_PREFIX) is not None]:
        obj.shape_key_remove(kb)
    _clear_if_only_basis(obj)


def _clear_if_only_basis(obj) -> None:
    key = obj.data.shape_keys
    if key is not None and len(key.key_blocks) == 1 and key.get(ADDED_BASIS_PROP):
        obj.shape_key_clear()


def _keyframe_all(obj, frames: list) -> None:
    """Key each baked shape key 0/1/0 around its frame, with linear interpolation."""
    key = obj.data.shape_keys
    prefs = bpy.context.preferences.edit
    old_interp = prefs.keyframe_new_interpolation_type
    prefs.keyframe_new_interpolation_type = "LINEAR"
    try:
        for i, frame in enumerate(frames):
            kb = key.key_blocks[_key_name(KEY_PREFIX, frame)]
            if i > 0:
                kb.value = 0.0
                kb.keyframe_insert("value", frame=frames[i - 1])
            kb.value = 1.0
            kb.keyframe_insert("value", frame=frame)
            if i + 1 < len(frames):
                kb.value = 0.0
                kb.keyframe_insert("value", frame=frames[i + 1])
    finally:
        prefs.keyframe_new_interpolation_type = old_interp
    if key.animation_data is not None and key.animation_data.action is not None:
        key.animation_data.action.name = ACTION_NAME


def attach(obj, frames: list) -> None:
    key = obj.data.shape_keys
    for kb in list(key.key_blocks):
        frame = _frame_of(kb.name, NEW_PREFIX)
        if frame is not None:
            kb.name = _key_name(KEY_PREFIX, frame)
    if PROGRESS_PROP in key:
        del key[PROGRESS_PROP]
    _keyframe_all(obj, frames)
    look.apply_splat_look(obj, source="attributes")
    obj.update_tag()


class ShapeKeysWriter(Writer):
    """One shape key per frame in the .blend (``cache_dir`` is unused); ``force`` lifts the size limit."""

    TARGET = TARGET
    estimate_size = staticmethod(estimate_size)
    detach = staticmethod(detach)

    def __init__(self, obj, n, frames, *, force: bool = False):
        super().__init__(obj, n, frames)
        self.force = force

    def begin(self, cache_dir, resume, info):
        n, count = self.n, len(self.frames)
        size_mb = estimate_size(n, count) / 1e6
        if n * count > LIMIT_POINT_FRAMES and not self.force:
            raise common.BakeError(f"shape keys for {n} points x {count} frames would add about {size_mb:.0f} MB "
                                   "to the .blend; use the geometry-nodes cache (or force the bake)")
        if n * count > WARN_POINT_FRAMES:
            info.warnings.append(f"shape keys add about {size_mb:.0f} MB to the .blend; the geometry-nodes cache "
                                 "is smaller and faster for this many points")
        obj = self.obj
        if obj.data.shape_keys is None:
            obj.shape_key_add(name="Basis", from_mix=False)
            obj.data.shape_keys[ADDED_BASIS_PROP] = True
        self.key = obj.data.shape_keys
        try:
            self.progress = json.loads(self.key.get(PROGRESS_PROP, "{}")) if resume else {}
        except (TypeError, ValueError):
            self.progress = {}
        wanted = {_key_name(NEW_PREFIX, f) for f, _ in self.frames}
        for kb in [kb for kb in self.key.key_blocks if _frame_of(kb.name, NEW_PREFIX) is not None]:
            if kb.name not in wanted or not resume:
                obj.shape_key_remove(kb)  # leftovers of another interrupted bake

    def done(self, frame, fp):
        return self.key.key_blocks.get(_key_name(NEW_PREFIX, frame)) is not None \
            and self.progress.get(str(frame)) == fp

    def write_frame(self, index, frame, arrays):
        name = _key_name(NEW_PREFIX, frame)
        kb = self.key.key_blocks.get(name)
        if kb is None:
            kb = self.obj.shape_key_add(name=name, from_mix=False)
        kb.value = 0.0
        kb.data.foreach_set("co", np.ascontiguousarray(arrays["positions"], np.float32).ravel())

    def mark(self, frame, fp):
        self.progress[str(frame)] = fp
        self.key[PROGRESS_PROP] = json.dumps(self.progress)

    def end(self, info):
        info.bytes = estimate_size(self.n, len(self.frames))

    def attach(self, info):
        attach(self.obj, [f for f, _ in self.frames])
