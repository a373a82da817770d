"""Faithful colour: an imported splat renders (Cycles, Standard view) in its file colour, and with view-dependent
colour on, the render camera sees the SH colour for its own direction."""

import importlib
import math

import bpy
import numpy as np
import pytest

from backend.io import ply, sh
from support.renders import render_pixels


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _render(scene, path, size=24):
    """Cycles CPU, no dither or denoise; (H, W, 3) floats of the written 8-bit PNG, row 0 at the top."""
    scene.render.engine = "CYCLES"
    scene.cycles.device, scene.cycles.samples, scene.cycles.use_denoising = "CPU", 4, False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.render.dither_intensity = 0.0
    return render_pixels(scene, path, size)[:, :, :3]


def _camera(scene, name, location, rotation):
    cam = bpy.data.objects.new(name, bpy.data.cameras.new(name))
    cam.data.type, cam.data.ortho_scale = "ORTHO", 2.0
    cam.location, cam.rotation_euler = location, rotation
    scene.collection.objects.link(cam)
    return cam


def _one_big_splat(path, f_dc, f_rest=None):
    """One opaque splat (sigma 2 m, the frame 2 m wide): the middle pixels see its flat centre."""
    ply.write_splats(path, ply.Splats(
        positions=np.zeros((1, 3)), f_dc=np.asarray([f_dc], np.float32),
        f_rest=np.zeros((1, 0), np.float32) if f_rest is None else np.asarray([f_rest], np.float32),
        opacity=np.full(1, 12.0), scale=np.log(np.full((1, 3), 2.0)), rotation=np.array([[1.0, 0, 0, 0]])))


@pytest.fixture
def colour_scene(addon, clean_scene):
    clean_scene.world = None  # black behind the splat
    clean_scene.view_settings.view_transform = "AgX"  # Blender's default for a new file
    clean_scene.view_settings.look = "None"
    clean_scene.camera = _camera(clean_scene, "Front", (0.0, -30.0, 0.0), (math.pi / 2, 0.0, 0.0))
    return clean_scene


def test_flat_colour_renders_as_in_the_file(addon, colour_scene, tmp_path):
    want = np.array([0.80, 0.35, 0.10])
    _one_big_splat(tmp_path / "flat.ply", (want - 0.5) / sh.SH_C0)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(tmp_path / "flat.ply"), standard_view=True) == {"FINISHED"}
    assert colour_scene.view_settings.view_transform == "Standard"
    got = _render(colour_scene, tmp_path / "flat.png")[10:14, 10:14].reshape(-1, 3)
    assert np.abs(got - want).max() <= 2.0 / 255, got.mean(axis=0) * 255

    colour_scene.view_settings.view_transform = "AgX"  # what the artist saw before: visibly off
    agx = _render(colour_scene, tmp_path / "agx.png")[10:14, 10:14].reshape(-1, 3).mean(axis=0)
    assert np.abs(agx - want).max() > 10.0 / 255, agx * 255


def test_view_dependent_colour_follows_the_render_camera(addon, colour_scene, tmp_path):
    f_dc = np.array([0.0, 0.0, 0.0])
    f_rest = np.zeros(9)
    f_rest[[0, 1, 2]] = [0.0, 0.0, -0.8]  # red: band-1 x term, so red depends on the view's x
    f_rest[[3, 4, 5]] = [0.6, 0.0, 0.0]  # green: band-1 y term
    _one_big_splat(tmp_path / "sh.ply", f_dc, f_rest)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(tmp_path / "sh.ply"), view_colour=True) == {"FINISHED"}
    obj = bpy.context.active_object
    look = _mod(addon, "core.look")
    assert look.get_modifier_input(look.look_modifier(obj), "SH Degree") == 1

    front = colour_scene.camera
    side = _camera(colour_scene, "Side", (-30.0, 0.0, 0.0), (math.pi / 2, 0.0, -math.pi / 2))
    seen = {}
    for cam in (front, side):
        colour_scene.camera = cam
        direction = -np.array(cam.matrix_world.translation)  # camera -> splat
        direction /= np.linalg.norm(direction)
        want = np.clip(sh.colour(f_dc[None], f_rest[None], direction[None])[0], 0, 1)
        seen[cam.name] = _render(colour_scene, tmp_path / f"{cam.name}.png")[10:14, 10:14].reshape(-1, 3)
        assert np.abs(seen[cam.name] - want).max() <= 2.0 / 255, (cam.name, seen[cam.name].mean(0) * 255, want * 255)
    assert np.abs(seen["Front"].mean(0) - seen["Side"].mean(0)).max() > 0.2  # the two views differ

    look.set_view_colour(obj, False)  # flat again: both views see the base colour
    colour_scene.camera = side
    flat = _render(colour_scene, tmp_path / "flat.png")[10:14, 10:14].reshape(-1, 3)
    assert np.abs(flat - 0.5).max() <= 2.0 / 255


def test_a_simulated_splat_keeps_the_colour_of_its_rest_pose(addon, colour_scene, tmp_path):
    """Turned 90 degrees about Z by a bake, the splat shows the front camera what the side camera saw at rest."""
    f_dc, f_rest = np.zeros(3), np.zeros(9)
    f_rest[2], f_rest[3] = -0.8, 0.6  # red: the x term; green: the y term
    _one_big_splat(tmp_path / "sh.ply", f_dc, f_rest)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(tmp_path / "sh.ply"), view_colour=True) == {"FINISHED"}
    obj = bpy.context.active_object
    splats, look = _mod(addon, "core.splat_objects"), _mod(addon, "core.look")
    q = np.array([[math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)]])  # 90 degrees about +Z
    splats.set_point_attributes(obj.data, {"rotations": q, "scales": np.full((1, 3), 2.0)},
                                {"rotations": "QUATERNION", "scales": "FLOAT_VECTOR"})
    look.set_modifier_input(look.look_modifier(obj), "Baked Transform", True)
    want = np.clip(sh.colour(f_dc[None], f_rest[None], np.array([[1.0, 0.0, 0.0]]))[0], 0, 1)  # R^T (0,1,0)
    got = _render(colour_scene, tmp_path / "turned.png")[10:14, 10:14].reshape(-1, 3)
    assert np.abs(got - want).max() <= 2.0 / 255, (got.mean(0) * 255, want * 255)
