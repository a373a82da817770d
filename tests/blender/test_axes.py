"""Axis conversion on import and export: Y-up and Y-down (3DGS / COLMAP) captures arrive upright, with each
splat's orientation and view-dependent colour turned along with the positions."""

import importlib

import bpy
import numpy as np
import pytest

from backend.io import ply, sh


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _tall_capture(up_sign: float, n=200, seed=0) -> ply.Splats:
    """A 2 m column along the file's +Y (up_sign=1) or -Y (-1); each splat long along that axis, with
    view-dependent colour in SH bands 1 (red), 2 (green) and 3 (blue)."""
    rng = np.random.default_rng(seed)
    pos = np.column_stack([rng.uniform(-0.1, 0.1, n), up_sign * rng.uniform(0, 2.0, n), rng.uniform(-0.1, 0.1, n)])
    f_rest = np.zeros((n, 45), np.float32)
    f_rest[:, 2] = -1.0  # red: band 1 (the x basis)
    f_rest[:, 15 + 4] = 0.5  # green: band 2
    f_rest[:, 30 + 10] = 0.3  # blue: band 3
    return ply.Splats(positions=pos, f_dc=rng.normal(size=(n, 3)) * 0.2, f_rest=f_rest,
                      opacity=np.full(n, 2.0), scale=np.log(np.tile([0.01, 0.08, 0.01], (n, 1))),
                      rotation=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)))


def _arrays(addon, obj):
    return _mod(addon, "core.splat_objects").splat_arrays(obj, world=True)


def _long_axes(arrays):
    rot = _mod_quat(arrays["rotation"])
    k = np.argmax(arrays["scale"], axis=1)
    return rot[np.arange(len(k)), :, k]  # column of R for the largest scale


def _mod_quat(q):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], 1).reshape(-1, 3, 3)


@pytest.mark.parametrize("preset,up_sign", [("Y_UP", 1.0), ("3DGS", -1.0)])
def test_y_up_and_y_down_captures_arrive_upright(addon, clean_scene, tmp_path, preset, up_sign):
    src = _tall_capture(up_sign)
    path = tmp_path / f"{preset}.ply"
    ply.write_splats(path, src)
    before = set(bpy.data.objects)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(path), axis_preset=preset) == {"FINISHED"}
    (obj,) = set(bpy.data.objects) - before
    a = _arrays(addon, obj)
    ext = np.ptp(a["positions"], axis=0)
    assert ext[2] > 1.8 and ext[0] < 0.25 and ext[1] < 0.25  # standing along Z
    assert a["positions"][:, 2].min() > -1e-4  # upright, not upside down: the column rises from z = 0
    assert np.all(np.abs(_long_axes(a)[:, 2]) > 0.999)  # every splat's long axis turned to Z too

    # View-dependent colour: seen along the turned direction, each splat looks as in the file.
    from bpy_extras.io_utils import axis_conversion
    forward, up = _mod(addon, "operators.io_ops").AXIS_PRESETS[preset][1:3]
    m = np.array(axis_conversion(from_forward=forward, from_up=up))
    dirs = np.random.default_rng(1).normal(size=(len(src), 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    want = sh.colour(src.f_dc, src.f_rest, dirs)
    got = sh.colour(a["f_dc"], a["f_rest"], dirs @ m.T)
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(sh.colour(a["f_dc"], a["f_rest"], dirs) - want).max() > 0.05  # (it did need turning)

    # Export with the same convention gives the file back.
    out = tmp_path / "back.ply"
    bpy.context.view_layer.objects.active = obj
    assert bpy.ops.export_scene.gaussian_splat(filepath=str(out), axis_preset=preset) == {"FINISHED"}
    back = ply.splats_from_ply(ply.read_ply(out))
    assert np.allclose(back.positions, src.positions, atol=1e-5)
    assert np.allclose(back.f_rest, src.f_rest, atol=1e-5)
    assert np.allclose(np.abs(back.rotation[:, 0]), 1.0, atol=1e-5)  # identity again (up to the sign of q)
    assert np.allclose(back.scale, src.scale, atol=1e-5)


def test_the_default_keeps_blenders_axes(addon, clean_scene, tmp_path):
    src = _tall_capture(1.0)
    path = tmp_path / "z.ply"
    ply.write_splats(path, src)
    before = set(bpy.data.objects)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(path)) == {"FINISHED"}
    (obj,) = set(bpy.data.objects) - before
    a = _arrays(addon, obj)
    assert np.allclose(a["positions"], src.positions, atol=1e-6) and np.array_equal(a["f_rest"], src.f_rest)
