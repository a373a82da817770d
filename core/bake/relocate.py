"""Keep the add-on's '//'-relative paths pointing at the same files when the .blend is saved elsewhere.

On Save As Blender rebases the relative paths it knows (images, the Mesh Cache modifier's file), but
not a Bake node's directory, a modifier's string input or an add-on's properties. The save_pre handler
rewrites ours for the new location, as Blender does for its own, so the saved file plays its bakes
from where they are. After a Save Copy (the open file keeps its location) save_post puts them back.
Moving the whole project folder needs nothing: '//' paths resolve against wherever the .blend is.
"""

from __future__ import annotations

import os

import bpy
from bpy.app.handlers import persistent

from .. import look, paths
from . import common, gn_cache, ply_sequence

_RESTORE: list = []  # (setter, original value) of the last save_pre, undone after a Save Copy


def _record_slot(obj, rebase):
    raw = obj.get(common.BAKE_PROP)
    record = common.bake_record(obj)
    if record is None:
        return
    new = dict(record)
    for key in ("dir", "path"):
        new[key] = rebase(record.get(key, ""))
    new["kept"] = [dict(k, dir=rebase(k.get("dir", ""))) for k in record.get("kept", []) if isinstance(k, dict)]
    if new != record:
        _RESTORE.append((lambda value, o=obj: o.__setitem__(common.BAKE_PROP, value), raw))
        common.write_record(obj, new)


def _set(setter, old, new) -> None:
    if new != old:
        _RESTORE.append((setter, old))
        setter(new)


def _rebase_object(obj, rebase) -> None:
    _record_slot(obj, rebase)
    for mod in obj.modifiers:
        if gn_cache.is_reader_modifier(mod):
            for bake in mod.bakes:
                _set(lambda v, b=bake: setattr(b, "directory", v), bake.directory, rebase(bake.directory))
        elif ply_sequence.is_reader_modifier(mod):
            try:
                old = look.get_modifier_input(mod, "Directory")
            except (KeyError, TypeError):  # the artist edited the reader group: nothing of ours to rebase
                continue
            _set(lambda v, m=mod: look.set_modifier_input(m, "Directory", v), old, rebase(old))
    settings = obj.splat_physics
    for prop in ("bake_dir", "reference_video"):
        old = getattr(settings, prop)
        _set(lambda v, s=settings, p=prop: setattr(s, p, v), old, rebase(old))


@persistent
def _save_pre(filepath="", *_args) -> None:
    _RESTORE.clear()
    old_blend = bpy.data.filepath
    if not old_blend or not filepath:
        return  # a first save: stored paths are absolute until then
    old_dir, new_dir = os.path.dirname(os.path.abspath(old_blend)), os.path.dirname(os.path.abspath(filepath))
    if os.path.normcase(old_dir) == os.path.normcase(new_dir):
        return

    def rebase(value):
        return paths.rebase_relative(value, old_dir, new_dir)

    for obj in bpy.data.objects:
        if obj.library is None:
            _rebase_object(obj, rebase)


@persistent
def _save_post(filepath="", *_args) -> None:
    if filepath and os.path.normcase(os.path.abspath(filepath)) != os.path.normcase(bpy.data.filepath):
        for setter, value in reversed(_RESTORE):  # a Save Copy: the open file stays where it was
            setter(value)
    _RESTORE.clear()


def register() -> None:
    if _save_pre not in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.append(_save_pre)
    if _save_post not in bpy.app.handlers.save_post:
        bpy.app.handlers.save_post.append(_save_post)


def unregister() -> None:
    for handlers, fn in ((bpy.app.handlers.save_pre, _save_pre), (bpy.app.handlers.save_post, _save_post)):
        while fn in handlers:
            handlers.remove(fn)
