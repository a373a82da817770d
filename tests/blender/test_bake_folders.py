"""Bakes own only what they made: a folder with the artist's files is refused untouched, a bake next to
them or re-baked into our own folder replaces only our files, switching targets keeps the other cache,
Free Bake deletes only our files, and bakes keep playing after Save As elsewhere or moving the project."""

import importlib
import json
import os
import re
import shutil
import time

import bpy
import numpy as np
import pytest

from support.siblings import load_sibling
from support.artist_files import ARTIST_FILES, plant_artist_files, tree_digest

DISK_TARGETS = ("gn_cache", "ply_sequence", "pc2")


def _load_test_bake():
    return load_sibling(__file__, "test_bake")


tb = _load_test_bake()


@pytest.fixture
def mods(addon):
    return tuple(importlib.import_module(f"{addon.__name__}.{name}")
                 for name in ("core.splat_objects", "core.bake", "core.look", "backend.io.ply"))



def _frames(bake, tmp_path, p0, name="job", offset=(0.0, 0.0, 0.0), last=None):
    out = tb.write_frames(tmp_path / name / "out", p0, offset)
    frames = bake.frames_from_dir(out)
    return frames if last is None else frames[:last]


def _plays(splats, obj, p0, frame=6, offset=(0.0, 0.0, 0.0)):
    got = tb.world_points(splats, obj, frame)["world"]
    want = tb.trajectory(p0, frame)["positions"] + np.float32(offset)
    return np.abs(got - want).max() < 1e-5


def _marker(folder):
    return json.loads((folder / "splat_bake.json").read_text())


@pytest.mark.parametrize("target", DISK_TARGETS)
def test_a_folder_holding_the_artists_files_is_refused_and_left_untouched(mods, project, tmp_path, target):
    splats, bake, _look, _ply = mods
    obj, p0 = tb.make_splat_object(mods, tmp_path)
    frames = _frames(bake, tmp_path, p0)
    chosen = project / "client_work"
    plant_artist_files(chosen)
    before = tree_digest(project)
    with pytest.raises(bake.BakeError, match=re.escape(str(chosen)) + ".*did not write.*nothing in this one"):
        bake.bake(obj, frames, target, str(chosen))
    assert tree_digest(project) == before
    assert [m.name for m in obj.modifiers] == ["Splat Look"] and bake.bake_record(obj) is None


def test_simulate_and_bake_refuses_the_artists_folder_before_running(mods, project, tmp_path):
    splats, bake, _look, _ply = mods
    job_folder = importlib.import_module(bake.__name__.rsplit(".", 1)[0] + ".job_folder")
    obj, _p0 = tb.make_splat_object(mods, tmp_path)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.splat.convert_to_particles()
    chosen = project / "client_work"
    plant_artist_files(chosen)
    obj.splat_physics.bake_dir = str(chosen)
    before = tree_digest(project, skip=("scene.blend",))
    with pytest.raises(RuntimeError, match=re.escape(str(chosen)) + ".*did not write"):
        bpy.ops.splat.simulate_bake()
    assert obj.splat_physics.last_level == "ERROR" and str(chosen) in obj.splat_physics.last_message
    assert tree_digest(project, skip=("scene.blend",)) == before  # no job folder, no cache, the files as they were
    assert not job_folder.job_dir_for(obj, "simulate").exists()


@pytest.mark.parametrize("target", DISK_TARGETS)
def test_bake_next_to_the_artists_files_rebake_and_free_touch_only_our_files(mods, project, tmp_path, target):
    splats, bake, _look, _ply = mods
    obj, p0 = tb.make_splat_object(mods, tmp_path)
    client = project / "client_work"
    plant_artist_files(client)
    cache = client / "splat_bake"  # a new folder: the bake creates and marks it
    around = tree_digest(project, skip=("scene.blend",))

    def artist_untouched():
        now = tree_digest(project, skip=("scene.blend",))
        return {k: v for k, v in now.items() if not k.startswith("client_work/splat_bake")} == around

    info = bake.bake(obj, _frames(bake, tmp_path, p0), target, str(cache))
    assert info.path.startswith("//client_work/splat_bake") and _plays(splats, obj, p0)
    assert artist_untouched() and target in _marker(cache)["targets"]

    # the artist drops a file into our folder; a re-bake (other motion, fewer frames) replaces only ours
    (cache / "notes.txt").write_text("my notes")
    first_files = set(_marker(cache)["targets"][target]["files"])
    fewer = _frames(bake, tmp_path, p0, name="job2", offset=(0.0, 0.0, 0.5), last=8)
    if target == "ply_sequence":
        time.sleep(1.1)  # Blender's Import PLY cache knows a file by path and mtime in whole seconds
    bake.bake(obj, fewer, target, str(cache))
    assert _plays(splats, obj, p0, frame=6, offset=(0.0, 0.0, 0.5))
    assert (cache / "notes.txt").read_text() == "my notes" and artist_untouched()
    files = set(_marker(cache)["targets"][target]["files"])
    if target != "pc2":  # frames 9 and 10 of the first bake are gone, the rest replaced
        assert files < first_files and all(not (cache / rel).exists() for rel in first_files - files)
    assert {p for p in tree_digest(cache) if "." in p} == files | {"notes.txt", "splat_bake.json"}

    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.splat.free_bake() == {"FINISHED"} and obj.splat_physics.last_message == "Bake freed"
    assert tree_digest(cache) == {"notes.txt": tree_digest(cache)["notes.txt"]}  # only the artist's file is left
    assert artist_untouched() and bake.bake_record(obj) is None


def test_a_crafted_marker_or_a_clashing_file_cannot_cost_the_artist_a_file(mods, project, tmp_path):
    splats, bake, _look, _ply = mods
    obj, p0 = tb.make_splat_object(mods, tmp_path)
    cache = project / "cache"
    bake.bake(obj, _frames(bake, tmp_path, p0), "gn_cache", str(cache))
    plant_artist_files(cache)
    (project / "outside.txt").write_text("keep me")
    (cache / "cache.pc2").write_bytes(b"the artist's own point cache")
    artist = {p: h for p, h in tree_digest(project).items() if not p.startswith(("cache/meta", "cache/blobs"))
              and p != "cache/splat_bake.json"}

    # a pc2 bake into the folder would overwrite a cache.pc2 it did not write: refused, the gn cache plays on
    with pytest.raises(bake.BakeError, match="has a file 'cache.pc2' that Splat Physics did not write"):
        bake.bake(obj, _frames(bake, tmp_path, p0), "pc2", str(cache))
    assert _plays(splats, obj, p0) and bake.bake_record(obj)["target"] == "gn_cache"
    assert {p: h for p, h in tree_digest(project).items() if p in artist} == artist

    # a marker edited to list the artist's files, or paths leading out of the folder, frees only our layout
    marker = _marker(cache)
    marker["targets"]["gn_cache"]["files"] += list(ARTIST_FILES) + ["../outside.txt", "meta/../../outside.txt",
                                                                    "/etc/hostname", "client"]
    (cache / "splat_bake.json").write_text(json.dumps(marker))
    assert bake.free_bake(obj)
    left = tree_digest(project)
    assert {p: h for p, h in left.items() if p in artist} == artist and not (cache / "meta").exists()
    assert not (cache / "splat_bake.json").exists()


def test_switching_targets_keeps_the_other_cache_and_free_deletes_both(mods, project, tmp_path):
    splats, bake, _look, _ply = mods
    obj, p0 = tb.make_splat_object(mods, tmp_path)
    frames = _frames(bake, tmp_path, p0)
    gn = bake.bake(obj, frames, "gn_cache")
    gn_files = tree_digest(gn.cache_dir)
    ply_seq = bake.bake(obj, frames, "ply_sequence")
    assert tree_digest(gn.cache_dir) == gn_files and _plays(splats, obj, p0)
    assert bake.bake_record(obj)["kept"] == [{"target": "gn_cache", "dir": "//splat_cache/Sheet/gn_cache"}]
    ply_files = tree_digest(ply_seq.cache_dir)
    again = bake.bake(obj, frames, "gn_cache")  # back to the first target: the sequence stays too
    assert again.cache_dir == gn.cache_dir and _plays(splats, obj, p0)
    assert tree_digest(ply_seq.cache_dir) == ply_files
    assert [k["target"] for k in bake.bake_record(obj)["kept"]] == ["ply_sequence"]

    # two targets sharing one chosen folder live side by side
    shared = project / "shared"
    bake.bake(obj, frames, "pc2", str(shared))
    bake.bake(obj, frames, "gn_cache", str(shared))
    assert (shared / "cache.pc2").is_file() and (shared / "meta").is_dir() and _plays(splats, obj, p0)
    assert set(_marker(shared)["targets"]) == {"pc2", "gn_cache"}

    assert bake.free_bake(obj)
    assert not os.path.exists(gn.cache_dir) and not os.path.exists(ply_seq.cache_dir) and not shared.exists()
    assert sorted(tree_digest(project)) == ["scene.blend"]  # every folder the bakes made is gone


def _bake_all_targets(mods, tmp_path):
    splats, bake, _look, _ply = mods
    objects = {}
    for target in DISK_TARGETS:
        obj, p0 = tb.make_splat_object(mods, tmp_path, name=f"S_{target}", location=(0.3, 0.0, 0.2))
        bake.bake(obj, _frames(bake, tmp_path, p0, name=f"job_{target}"), target)
        objects[obj.name] = p0
    return objects


def _all_play(splats, objects, frame=6):
    return {name: _plays(splats, bpy.data.objects[name], p0, frame) for name, p0 in objects.items()}


def test_bakes_keep_playing_after_save_as_elsewhere_a_copy_and_moving_the_project(mods, project, tmp_path):
    splats, bake, _look, _ply = mods
    objects = _bake_all_targets(mods, tmp_path)
    bpy.data.objects["S_gn_cache"].splat_physics.bake_dir = "//chosen_bakes"
    bpy.ops.wm.save_mainfile()
    all_ok = {name: True for name in objects}
    assert _all_play(splats, objects) == all_ok
    records = {name: bake.bake_record(bpy.data.objects[name]) for name in objects}

    # Save As into another folder: the stored paths now lead from there back to the same cache files
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(elsewhere / "copy.blend"))
    assert _all_play(splats, objects) == all_ok
    for name, old in records.items():
        rec = bake.bake_record(bpy.data.objects[name])
        assert rec["dir"].startswith("//../../project/splat_cache/")
        assert os.path.normpath(bpy.path.abspath(rec["dir"])) == os.path.normpath(str(project / old["dir"][2:]))
    assert bpy.data.objects["S_gn_cache"].splat_physics.bake_dir == "//../../project/chosen_bakes"
    bpy.ops.wm.open_mainfile(filepath=str(elsewhere / "copy.blend"))  # what was written to disk plays too
    assert _all_play(splats, objects) == all_ok

    # a Save Copy writes rebased paths into the copy and leaves the open file's paths as they were
    stored = {name: bpy.data.objects[name].get("splat_bake") for name in objects}
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "copy_of_copy.blend"), copy=True)
    assert {name: bpy.data.objects[name].get("splat_bake") for name in objects} == stored
    assert _all_play(splats, objects) == all_ok
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "copy_of_copy.blend"))
    assert _all_play(splats, objects) == all_ok

    # moving the whole project folder: '//' paths resolve against wherever the .blend now is
    moved = tmp_path / "moved" / "project renamed"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))
    bpy.ops.wm.open_mainfile(filepath=str(moved / "scene.blend"))
    assert _all_play(splats, objects) == all_ok
    assert all(bake.bake_record(bpy.data.objects[n])["dir"].startswith("//splat_cache/") for n in objects)
    shutil.move(str(moved), str(project))  # the fixture's teardown expects the folder back


def test_a_cache_from_the_earlier_format_is_rebaked_and_freed_file_by_file(mods, project, tmp_path):
    """Format 1 marked the whole folder with {"target": ...}: its layout's files are ours, nothing else."""
    splats, bake, _look, _ply = mods
    obj, p0 = tb.make_splat_object(mods, tmp_path)
    cache = project / "old_cache"
    cache.mkdir()
    (cache / "splat_bake.json").write_text(json.dumps({"target": "pc2", "object": "Sheet", "format_version": 1}))
    (cache / "cache.pc2").write_bytes(b"an old bake")
    plant_artist_files(cache)
    artist = {p: h for p, h in tree_digest(cache).items() if p.startswith(("holiday", "client"))}
    bake.bake(obj, _frames(bake, tmp_path, p0), "pc2", str(cache))
    assert _plays(splats, obj, p0) and (cache / "cache.pc2").read_bytes() != b"an old bake"
    assert _marker(cache)["targets"]["pc2"]["files"] == ["cache.pc2"]
    assert bake.free_bake(obj)
    assert tree_digest(cache) == {**artist, "client": "dir"}


@pytest.mark.parametrize("then", ("gn_cache", "pc2"))
def test_switching_away_from_shape_keys_keeps_them_under_the_new_bake(mods, project, tmp_path, then):
    splats, bake, _look, _ply = mods
    obj, p0 = tb.make_splat_object(mods, tmp_path)
    frames = _frames(bake, tmp_path, p0)
    bake.bake(obj, frames, "shape_keys")
    keys = [k.name for k in obj.data.shape_keys.key_blocks]
    moved = _frames(bake, tmp_path, p0, name="job2", offset=(0.0, 0.0, 1.0))
    bake.bake(obj, moved, then)
    assert [k.name for k in obj.data.shape_keys.key_blocks] == keys  # the keys are still in the .blend
    assert _plays(splats, obj, p0, offset=(0.0, 0.0, 1.0))  # and the new bake is what plays
    assert {"target": "shape_keys", "dir": ""} in bake.bake_record(obj)["kept"]
    assert bake.free_bake(obj)
    assert obj.data.shape_keys is None and _plays(splats, obj, p0, frame=1)
