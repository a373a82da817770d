"""Bake writers with real bpy: every target plays back an analytic trajectory, in this session and in a
fresh Blender process without the add-on; interrupted bakes keep the old cache and resume; bad input is
refused; a Cycles render changes only where the points moved."""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import bpy
import numpy as np
import pytest

from backend import protocol
from support.siblings import load_sibling
from support.artist_files import tree_digest

N_FRAMES = 10
TARGETS = ("gn_cache", "ply_sequence", "pc2", "shape_keys")


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _load_test_look():
    return load_sibling(__file__, "test_look")


@pytest.fixture
def mods(addon):
    return _mod(addon, "core.splat_objects"), _mod(addon, "core.bake"), _mod(addon, "core.look"), \
        _mod(addon, "backend.io.ply")


@pytest.fixture
def saved_blend(addon, clean_scene, tmp_path):
    """A scene saved to tmp_path (caches are '//'-relative); the session is reset to an unsaved file after."""
    path = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    yield path
    bpy.ops.wm.read_homefile(use_empty=True)


def rest_points(nx=12, nz=12):
    """A sheet of points in the xz-plane (y = 0), x and z in [-1.5, 1.5]."""
    x, z = np.meshgrid(np.linspace(-1.5, 1.5, nx), np.linspace(-1.5, 1.5, nz), indexing="ij")
    return np.stack([x.ravel(), np.zeros(x.size), z.ravel()], axis=1).astype(np.float32)


def trajectory(p0, frame):
    """Poke-like analytic motion: points with x < -0.3 rise, turn about z and stretch; the rest stay."""
    t = (frame - 1) / (N_FRAMES - 1)
    moving = p0[:, 0] < -0.3
    pos = p0.copy()
    pos[moving, 2] += 0.6 * t
    pos[moving, 0] += 0.1 * np.sin(3 * t)
    angle = np.where(moving, 0.8 * t, 0.0)
    rot = np.stack([np.cos(angle / 2), np.zeros_like(angle), np.zeros_like(angle), np.sin(angle / 2)], axis=1)
    scales = np.tile(np.float32([0.08, 0.05, 0.08]), (len(p0), 1))
    scales[moving, 1] *= 1 + t
    return {"positions": pos.astype(np.float32), "rotations": rot.astype(np.float32),
            "scales": scales.astype(np.float32), "time": np.float32(t)}


def write_frames(folder, p0, offset=(0.0, 0.0, 0.0)):
    """A job's out/ folder with N_FRAMES frame files in the protocol's layout (world space)."""
    for f in range(1, N_FRAMES + 1):
        arrays = trajectory(p0, f)
        arrays["positions"] = arrays["positions"] + np.float32(offset)
        protocol.atomic_save_npz(os.path.join(folder, protocol.FRAMES_DIR, protocol.frame_file_name(f)), **arrays)
    return folder


def make_splat_object(mods, folder, name="Sheet", location=(0.0, 0.0, 0.0), rotation_z=0.0):
    """Splats at the rest points (world); the object may be transformed (its mesh holds local points)."""
    splats, _bake, _look, ply = mods
    p0 = rest_points()
    n = len(p0)
    rng = np.random.default_rng(0)
    mw = np.eye(4)
    c, s = np.cos(rotation_z), np.sin(rotation_z)
    mw[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    mw[:3, 3] = location
    local = (p0 - mw[:3, 3]) @ mw[:3, :3]
    path = os.path.join(folder, f"{name}.ply")
    ply.write_splats(path, ply.Splats(local, rng.normal(size=(n, 3)), np.zeros((n, 0)), np.full(n, 4.0),
                                      np.log(np.full((n, 3), 0.08)), np.tile([1.0, 0, 0, 0], (n, 1))))
    obj = splats.import_splats(path, bpy.context, name=name)
    obj.location = location
    obj.rotation_euler = (0.0, 0.0, rotation_z)
    bpy.context.view_layer.update()
    return obj, p0


def world_points(splats, obj, frame):
    bpy.context.scene.frame_set(frame)
    ev = splats.evaluated_points(obj)
    mw = np.array(obj.matrix_world)
    ev["world"] = ev["positions"].astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]
    return ev


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_plays_back_the_trajectory(mods, saved_blend, tmp_path, target):
    splats, bake, look, _ = mods
    obj, p0 = make_splat_object(mods, tmp_path, location=(0.4, 0.2, -0.1), rotation_z=0.5)
    out = write_frames(tmp_path / "job" / "out", p0)
    info = bake.bake(obj, bake.frames_from_dir(out), target)
    assert (info.target, info.frame_start, info.frame_end, info.n_points) == (target, 1, N_FRAMES, len(p0))
    assert info.frames_written == N_FRAMES and info.frames_resumed == 0
    if target != "shape_keys":
        assert info.path.startswith("//splat_cache/Sheet/")
        assert os.path.isdir(info.cache_dir)
        estimate = bake.estimate_bake_size(target, len(p0), N_FRAMES)
        assert abs(estimate - info.bytes) < 0.1 * info.bytes, (estimate, info.bytes)
    mw3 = np.array(obj.matrix_world)[:3, :3]
    for frame in (1, 4, N_FRAMES, N_FRAMES + 3):
        want = trajectory(p0, min(frame, N_FRAMES))
        got = world_points(splats, obj, frame)
        np.testing.assert_allclose(got["world"], want["positions"], atol=1e-5, err_msg=f"frame {frame}")
        if target == "gn_cache":
            rot_world = mw3 @ splats.quat_to_matrix(got["rotations"])
            np.testing.assert_allclose(rot_world, splats.quat_to_matrix(want["rotations"]), atol=1e-5)
            np.testing.assert_allclose(got["scales"], want["scales"], rtol=1e-5)
        if target == "ply_sequence":
            rot = np.stack([got[f"rot_{i}"] for i in range(4)], axis=1)
            rot_world = mw3 @ splats.quat_to_matrix(rot)
            np.testing.assert_allclose(rot_world, splats.quat_to_matrix(want["rotations"]), atol=1e-5)
            scales = np.exp(np.stack([got[f"scale_{i}"] for i in range(3)], axis=1))
            np.testing.assert_allclose(scales, want["scales"], rtol=1e-5)
    # the look instances every point, with the bake's transform for the GN cache
    dg = bpy.context.evaluated_depsgraph_get()
    bpy.context.scene.frame_set(7)
    mats = np.array([np.array(i.matrix_world) for i in dg.object_instances
                     if i.is_instance and i.parent is not None and i.parent.original == obj])
    assert len(mats) == len(p0)
    if target == "gn_cache":
        want = trajectory(p0, 7)
        k = look.DEFAULT_SPLAT_SIZE
        a = splats.quat_to_matrix(want["rotations"]) * (want["scales"] * k)[:, None, :]
        order = np.lexsort(mats[:, :3, 3].T.round(5))
        ref = np.lexsort(want["positions"].T.round(5))
        np.testing.assert_allclose(mats[order, :3, :3], a[ref], atol=1e-5)


_PLAYBACK_SCRIPT = textwrap.dedent("""
    import sys, json
    import bpy, numpy as np
    blend, expected = sys.argv[1], sys.argv[2]
    bpy.ops.wm.open_mainfile(filepath=blend)
    assert not any("splat_physics" in name for name in bpy.context.preferences.addons.keys()), "add-on enabled"
    want = np.load(expected)
    scene = bpy.context.scene
    result = {}
    for ob in [o for o in bpy.data.objects if o.type == "MESH"]:
        errors = []
        for frame in (1, 6, 10):
            scene.frame_set(frame)
            look = ob.modifiers["Splat Look"]
            look.show_viewport = False
            dg = bpy.context.evaluated_depsgraph_get()
            dg.update()
            me = ob.evaluated_get(dg).data
            co = np.empty(len(me.vertices) * 3, np.float32)
            me.vertices.foreach_get("co", co)
            mw = np.array(ob.matrix_world)
            world = co.reshape(-1, 3) @ mw[:3, :3].T + mw[:3, 3]
            errors.append(float(np.abs(world - want[f"f{frame}"]).max()))
            look.show_viewport = True
            dg.update()
            instances = sum(1 for i in dg.object_instances
                            if i.is_instance and i.parent is not None and i.parent.original == ob)
        result[ob.name] = {"error": max(errors), "instances": instances}
    print("RESULT " + json.dumps(result))
""")


def test_baked_file_plays_back_in_blender_without_the_addon(mods, saved_blend, tmp_path):
    splats, bake, _look, _ = mods
    objects = {}
    for target in TARGETS:
        obj, p0 = make_splat_object(mods, tmp_path, name=f"S_{target}", location=(0.3, 0.0, 0.2))
        out = write_frames(tmp_path / f"job_{target}" / "out", p0)
        bake.bake(obj, bake.frames_from_dir(out), target)
        objects[obj.name] = p0
    bpy.ops.wm.save_mainfile()
    expected = tmp_path / "expected.npz"  # every object has the same rest points and trajectory
    np.savez(expected, **{f"f{f}": trajectory(rest_points(), f)["positions"] for f in (1, 6, 10)})
    script = tmp_path / "playback.py"
    script.write_text(_PLAYBACK_SCRIPT)
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "fresh_user"))
    proc = subprocess.run([sys.executable, str(script), str(saved_blend), str(expected)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(tmp_path))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(lines[-1][7:])
    assert set(result) == set(objects)
    for name, r in result.items():
        assert r["error"] < 1e-5, (name, r)
        assert r["instances"] == len(rest_points()), (name, r)


def test_interrupted_bake_keeps_the_previous_one_then_resumes_and_frees(mods, saved_blend, tmp_path):
    splats, bake, look, _ = mods
    obj, p0 = make_splat_object(mods, tmp_path)
    first = bake.bake(obj, bake.frames_from_dir(write_frames(tmp_path / "a", p0)), "gn_cache")
    moved = bake.frames_from_dir(write_frames(tmp_path / "b", p0, offset=(0.0, 0.0, 1.0)))

    class Stop(Exception):
        pass

    def stop_after_five(done, total, frame):
        if done == 5:
            raise Stop

    with pytest.raises(Stop):
        bake.bake(obj, moved, "gn_cache", progress=stop_after_five)
    # the old cache still plays
    np.testing.assert_allclose(world_points(splats, obj, 6)["world"], trajectory(p0, 6)["positions"], atol=1e-5)
    assert bake.bake_record(obj)["path"] == first.path
    resumed = bake.bake(obj, bake.frames_from_dir(tmp_path / "b"), "gn_cache")
    assert (resumed.frames_resumed, resumed.frames_written) == (5, 5)
    np.testing.assert_allclose(world_points(splats, obj, 6)["world"],
                               trajectory(p0, 6)["positions"] + np.float32([0, 0, 1]), atol=1e-5)
    leftovers = [d for d in os.listdir(os.path.dirname(resumed.cache_dir)) if d.startswith(".")]
    assert leftovers == []

    # switching target keeps the previous target's cache as it was; free_bake deletes both, restores the look
    gn_files = tree_digest(resumed.cache_dir)
    pc2 = bake.bake(obj, moved, "pc2")
    assert tree_digest(resumed.cache_dir) == gn_files and os.path.isfile(os.path.join(pc2.cache_dir, "cache.pc2"))
    assert [m.type for m in obj.modifiers] == ["MESH_CACHE", "NODES"]
    assert bake.free_bake(obj)
    assert not os.path.exists(pc2.cache_dir) and not os.path.exists(resumed.cache_dir)
    assert [m.name for m in obj.modifiers] == ["Splat Look"]
    assert look.get_modifier_input(obj.modifiers["Splat Look"], "Baked Transform") is False
    np.testing.assert_allclose(world_points(splats, obj, 6)["world"], p0, atol=1e-6)
    assert bake.bake_record(obj) is None


def test_bad_bake_input_is_refused_with_a_clear_message(mods, saved_blend, tmp_path, monkeypatch):
    splats, bake, _look, _ = mods
    obj, p0 = make_splat_object(mods, tmp_path)
    good = [(f, trajectory(p0, f)) for f in range(1, 4)]
    wrong_n = [(1, {k: v[:-1] if np.ndim(v) else v for k, v in trajectory(p0, 1).items()})]
    nan = [(1, dict(trajectory(p0, 1)))]
    nan[0][1]["positions"] = nan[0][1]["positions"].copy()
    nan[0][1]["positions"][3] = np.nan
    cache = tmp_path / "cache"
    for frames, words in ((wrong_n, "shape"), (nan, "NaN"), ([], "no frames"),
                          ([(2, good[0][1]), (1, good[1][1])], "increase")):
        with pytest.raises(bake.BakeError, match=words):
            bake.bake(obj, frames, "gn_cache", str(cache))
    with pytest.raises(bake.BakeError, match="consecutive"):
        bake.bake(obj, [good[0], (5, good[1][1])], "pc2", str(cache))
    assert not cache.exists() and not (tmp_path / ".cache.partial").exists()
    assert [m.name for m in obj.modifiers] == ["Splat Look"]
    empty = bpy.data.objects.new("Empty", bpy.data.meshes.new("Empty"))
    bpy.context.scene.collection.objects.link(empty)
    with pytest.raises(bake.BakeError, match="no points"):
        bake.bake(empty, good, "gn_cache")
    with pytest.raises(bake.BakeError, match="unknown bake target"):
        bake.estimate_bake_size("vdb", 10, 10)
    # shape keys: a size warning, and a refusal above the limit
    shape_keys = importlib.import_module(bake.__name__ + ".shape_keys")
    monkeypatch.setattr(shape_keys, "WARN_POINT_FRAMES", 100)
    info = bake.bake(obj, good, "shape_keys")
    assert info.warnings and "MB" in info.warnings[0]
    monkeypatch.setattr(shape_keys, "LIMIT_POINT_FRAMES", 200)
    with pytest.raises(bake.BakeError, match="geometry-nodes cache"):
        bake.bake(obj, good, "shape_keys")
    assert bake.estimate_bake_size("gn_cache", 100_000, 120) == pytest.approx(100_000 * 120 * 40, rel=0.01)


def test_render_changes_only_where_the_points_moved(mods, saved_blend, tmp_path):
    splats, bake, _look, _ = mods
    render = _load_test_look()
    obj, p0 = make_splat_object(mods, tmp_path)
    bake.bake(obj, bake.frames_from_dir(write_frames(tmp_path / "job", p0)), "gn_cache")
    scene = bpy.context.scene
    render.ortho_camera(scene, scale=4.0)
    scene.frame_set(1)
    before = render.render_png(scene, tmp_path / "f1.png")
    scene.frame_set(N_FRAMES)
    after = render.render_png(scene, tmp_path / "f10.png")
    diff = np.abs(after[..., :3] - before[..., :3]).max(axis=2)
    blocks = diff.reshape(8, 8, 8, 8).max(axis=(1, 3))  # 8x8 blocks of 8x8 px; columns = world x
    # world x < -0.3 moves (image columns < 27 px), x > -0.3 stays (the static half starts at x = 0.14 -> 34 px)
    assert blocks[:, :3].max() > 0.3  # the left region moved
    assert blocks[:, 5:].max() < 0.02, blocks  # the right side is unchanged
    assert before[..., :3].max() > 0.3  # something was rendered
