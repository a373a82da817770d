"""Gaussian-splat PLY import/export through the registered operators, with real bpy."""

import importlib

import bpy
import numpy as np
import pytest
from mathutils import Euler

SH_C0 = 0.28209479177387814


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


@pytest.fixture
def mods(addon):
    return _mod(addon, "core.splat_objects"), _mod(addon, "backend.io.ply")


def _synthetic_splats(ply, n=300, degree=3, normals=True, seed=0):
    rng = np.random.default_rng(seed)
    k = 3 * ((degree + 1) ** 2 - 1)
    return ply.Splats(
        positions=rng.uniform(-1, 1, (n, 3)),
        f_dc=rng.normal(size=(n, 3)),
        f_rest=rng.normal(size=(n, k)) * 0.1,
        opacity=rng.normal(size=n) + 2.0,
        scale=rng.uniform(-5, -2, (n, 3)),
        rotation=rng.normal(size=(n, 4)),  # not normalised, as trainers write them
        normals=rng.normal(size=(n, 3)) if normals else None,
    )


def _attr(mesh, name):
    a = mesh.attributes[name]
    assert a.domain == "POINT" and a.data_type == "FLOAT", (name, a.domain, a.data_type)
    out = np.empty(len(mesh.vertices), np.float32)
    a.data.foreach_get("value", out)
    return out


def _co(mesh):
    out = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", out)
    return out.reshape(-1, 3)


def _import(path):
    before = set(bpy.data.objects)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(path)) == {"FINISHED"}
    (obj,) = set(bpy.data.objects) - before
    return obj


def _datablock_counts():
    return (len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.node_groups))


def test_operators_are_registered_in_the_file_menus(addon):
    assert hasattr(bpy.types, "IMPORT_SCENE_OT_gaussian_splat")
    assert hasattr(bpy.types, "EXPORT_SCENE_OT_gaussian_splat")


def test_import_3dgs_ply_gives_point_attributes_matching_the_file(mods, clean_scene, tmp_path):
    splats, ply = mods
    src = _synthetic_splats(ply)
    path = tmp_path / "scene.ply"
    ply.write_splats(path, src)
    obj = _import(path)
    mesh = obj.data
    assert obj.type == "MESH" and len(mesh.vertices) == 300 and len(mesh.edges) == 0 and len(mesh.polygons) == 0
    np.testing.assert_array_equal(_co(mesh), src.positions)
    file = ply.read_ply(path)
    for name in file:
        if name in ("x", "y", "z"):
            continue
        np.testing.assert_array_equal(_attr(mesh, name), file[name], err_msg=name)
    assert len([a for a in mesh.attributes if a.name.startswith("f_rest_")]) == 45
    arrays = splats.splat_arrays(obj, world=False)
    np.testing.assert_array_equal(arrays["f_rest"], src.f_rest)
    np.testing.assert_array_equal(arrays["rotation"], src.rotation)
    assert any(m.name == "Splat Look" for m in obj.modifiers)


def test_plain_xyz_ply_and_existing_meshes_get_the_same_defaults(mods, clean_scene, tmp_path):
    splats, ply = mods
    rng = np.random.default_rng(1)
    pts = rng.uniform(0, 2, (200, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (200, 3)).astype(np.uint8)
    path = tmp_path / "cloud.ply"
    ply.write_ply(path, {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
                         "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]})
    obj = _import(path)
    expected = ply.read_splats(path)
    mesh = obj.data
    np.testing.assert_allclose(_attr(mesh, "f_dc_0"), (rgb[:, 0] / 255.0 - 0.5) / SH_C0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(_attr(mesh, "opacity"), np.log(0.9 / 0.1), rtol=1e-6)
    np.testing.assert_array_equal(_attr(mesh, "scale_1"), expected.scale[:, 1])
    np.testing.assert_array_equal(_attr(mesh, "rot_0"), 1.0)
    # an existing mesh of the same points gets the same defaults (grey: no colour attribute)
    me = bpy.data.meshes.new("plain")
    me.vertices.add(len(pts))
    me.vertices.foreach_set("co", pts.ravel())
    plain = bpy.data.objects.new("plain", me)
    clean_scene.collection.objects.link(plain)
    added = splats.ensure_splat_attributes(plain)
    assert set(added) == set(splats.REQUIRED_NAMES)
    np.testing.assert_array_equal(_attr(me, "scale_0"), expected.scale[:, 0])
    np.testing.assert_allclose(_attr(me, "f_dc_2"), 0.0, atol=1e-6)
    assert splats.ensure_splat_attributes(plain) == []


def test_export_then_import_round_trips(mods, clean_scene, tmp_path):
    splats, ply = mods
    src = _synthetic_splats(ply, n=150, degree=1, normals=False, seed=2)
    src.extras["segment"] = np.arange(150, dtype=np.int32) % 7
    ply.write_splats(tmp_path / "a.ply", src)
    obj = _import(tmp_path / "a.ply")
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.export_scene.gaussian_splat(filepath=str(tmp_path / "b.ply")) == {"FINISHED"}
    a, b = ply.read_ply(tmp_path / "a.ply"), ply.read_ply(tmp_path / "b.ply")
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    again = _import(tmp_path / "b.ply")
    np.testing.assert_array_equal(_co(again.data), src.positions)


@pytest.mark.parametrize("scale", [(2.0, 2.0, 2.0), (1.0, 3.0, 0.5)])
def test_export_applies_the_object_transform_to_the_gaussians(mods, clean_scene, tmp_path, scale):
    splats, ply = mods
    src = _synthetic_splats(ply, n=64, degree=0, normals=False, seed=3)
    ply.write_splats(tmp_path / "a.ply", src)
    obj = _import(tmp_path / "a.ply")
    obj.location = (1.0, -2.0, 0.5)
    obj.rotation_euler = Euler((0.3, -0.7, 1.1))
    obj.scale = scale
    bpy.context.view_layer.update()
    out = tmp_path / "world.ply"
    splats.export_splats(obj, out)
    got = ply.read_splats(out)
    mw = np.array(obj.matrix_world)
    np.testing.assert_allclose(got.positions, src.positions @ mw[:3, :3].T + mw[:3, 3], atol=1e-5)

    def cov(rotation, log_scale):
        r = splats.quat_to_matrix(rotation)
        a = r * np.exp(log_scale)[:, None, :]
        return a @ np.swapaxes(a, 1, 2)

    want = mw[:3, :3] @ cov(src.rotation, src.scale) @ mw[:3, :3].T
    np.testing.assert_allclose(cov(got.rotation, got.scale), want, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(got.rotation, axis=1), 1.0, atol=1e-5)


def test_bad_input_reports_an_error_and_leaves_nothing_behind(mods, clean_scene, tmp_path):
    splats, ply = mods
    missing_xyz = tmp_path / "no_xyz.ply"
    ply.write_ply(missing_xyz, {"f_dc_0": np.zeros(4, np.float32), "opacity": np.zeros(4, np.float32)})
    empty_file = tmp_path / "empty.ply"
    empty_file.write_bytes(b"")
    no_points = tmp_path / "no_points.ply"
    ply.write_splats(no_points, _synthetic_splats(ply, n=0, degree=0, normals=False))
    nan = _synthetic_splats(ply, n=20, degree=0, normals=False)
    nan.positions[3, 1] = np.nan
    nan_file = tmp_path / "nan.ply"
    ply.write_splats(nan_file, nan)
    counts = _datablock_counts()
    for path, words in ((missing_xyz, "x/y/z"), (empty_file, "not a PLY"), (no_points, "no points"),
                        (nan_file, "NaN")):
        with pytest.raises(RuntimeError, match=words):
            bpy.ops.import_scene.gaussian_splat(filepath=str(path))
        assert _datablock_counts() == counts, path

    # export: an empty mesh and a mesh with NaN positions; no file, no new attributes
    for name, pts, words in (("Empty", np.zeros((0, 3)), "no points"),
                             ("Broken", np.array([[0, 0, 0], [np.nan, 1, 1]]), "NaN")):
        me = bpy.data.meshes.new(name)
        me.vertices.add(len(pts))
        me.vertices.foreach_set("co", np.ascontiguousarray(pts, np.float32).ravel())
        obj = bpy.data.objects.new(name, me)
        clean_scene.collection.objects.link(obj)
        bpy.context.view_layer.objects.active = obj
        names = {a.name for a in me.attributes}
        target = tmp_path / f"{name}.ply"
        with pytest.raises(RuntimeError, match=words):
            bpy.ops.export_scene.gaussian_splat(filepath=str(target))
        assert not target.exists()
        with pytest.raises(splats.SplatError, match=words):
            splats.ensure_splat_attributes(obj)
        assert {a.name for a in me.attributes} == names
