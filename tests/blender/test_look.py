"""The splat look: instance transforms A = R diag(s k), colour/alpha attributes, heat map, Cycles render."""

import importlib

import bpy
import numpy as np
import pytest
from support.renders import render_pixels

SH_C0 = 0.28209479177387814


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


@pytest.fixture
def mods(addon):
    return _mod(addon, "core.splat_objects"), _mod(addon, "core.look"), _mod(addon, "backend.io.ply")


def _splat_object(mods, tmp_path, n=40, seed=0, **fields):
    splats, _look, ply = mods
    rng = np.random.default_rng(seed)
    values = dict(positions=rng.uniform(-1, 1, (n, 3)), f_dc=rng.normal(size=(n, 3)), f_rest=np.zeros((n, 0)),
                  opacity=rng.uniform(-1, 4, n), scale=rng.uniform(-4, -2, (n, 3)), rotation=rng.normal(size=(n, 4)))
    values.update(fields)
    path = tmp_path / f"look_{seed}.ply"
    ply.write_splats(path, ply.Splats(**values))
    return splats.import_splats(path, bpy.context), values


def _instance_matrices(obj):
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    mats = [np.array(i.matrix_world) for i in dg.object_instances
            if i.is_instance and i.parent is not None and i.parent.original == obj and i.object.type == "MESH"]
    return np.array(mats)


def _points_cloud(obj):
    """The evaluated point cloud drawn in "Viewport Points" mode, as {attribute: array}."""
    dg = bpy.context.evaluated_depsgraph_get()
    dg.update()
    for inst in dg.object_instances:
        if inst.object.type == "POINTCLOUD" and inst.parent is not None and inst.parent.original == obj:
            pc = inst.object.data
            out = {}
            for a in pc.attributes:
                width = {"FLOAT": 1, "FLOAT_COLOR": 4, "FLOAT_VECTOR": 3}.get(a.data_type)
                if width is None:
                    continue
                buf = np.empty(len(pc.points) * width, np.float32)
                a.data.foreach_get({"FLOAT": "value", "FLOAT_COLOR": "color", "FLOAT_VECTOR": "vector"}[a.data_type],
                                   buf)
                out[a.name] = buf.reshape(len(pc.points), width) if width > 1 else buf
            return out
    raise AssertionError("no point cloud evaluated")


def test_instances_are_icospheres_transformed_by_rotation_and_scale(mods, clean_scene, tmp_path):
    splats, look, _ = mods
    obj, v = _splat_object(mods, tmp_path, opacity=np.full(40, 3.0))
    mats = _instance_matrices(obj)
    assert len(mats) == 40
    k = look.DEFAULT_SPLAT_SIZE
    a = splats.quat_to_matrix(v["rotation"]) * (np.exp(v["scale"]) * k)[:, None, :]
    np.testing.assert_allclose(mats[:, :3, :3], a, atol=1e-6)
    np.testing.assert_allclose(mats[:, :3, 3], v["positions"], atol=1e-6)
    # the splat size input scales every instance
    look.apply_splat_look(obj, splat_size=1.0)
    np.testing.assert_allclose(_instance_matrices(obj)[:, :3, :3], a / k, atol=1e-6)


def test_baked_transform_reads_rotations_and_linear_scales(mods, clean_scene, tmp_path):
    splats, look, _ = mods
    obj, v = _splat_object(mods, tmp_path, seed=1, opacity=np.full(40, 3.0))
    rng = np.random.default_rng(5)
    q = rng.normal(size=(40, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    s = rng.uniform(0.01, 0.1, (40, 3))
    splats.set_point_attributes(obj.data, {"rotations": q, "scales": s}, {"rotations": "QUATERNION"})
    look.apply_splat_look(obj, source="bake", splat_size=2.0)
    a = splats.quat_to_matrix(q) * (s * 2.0)[:, None, :]
    np.testing.assert_allclose(_instance_matrices(obj)[:, :3, :3], a, atol=1e-6)
    look.apply_splat_look(obj, source="attributes")
    a_static = splats.quat_to_matrix(v["rotation"]) * (np.exp(v["scale"]) * 2.0)[:, None, :]
    np.testing.assert_allclose(_instance_matrices(obj)[:, :3, :3], a_static, atol=1e-6)


def test_colour_alpha_heat_map_and_points_display(mods, clean_scene, tmp_path):
    splats, look, _ = mods
    opacity = np.linspace(-8, 4, 40)
    obj, v = _splat_object(mods, tmp_path, seed=2, opacity=opacity)
    # faint splats (alpha < Min Opacity) are not instanced
    alpha = 1 / (1 + np.exp(-opacity))
    assert len(_instance_matrices(obj)) == int(np.sum(alpha >= 1 / 255))
    look.set_splat_display(obj, "POINTS")
    assert look.splat_display(obj) == "POINTS"
    pts = _points_cloud(obj)
    np.testing.assert_allclose(pts["splat_color"][:, :3], np.clip(0.5 + SH_C0 * v["f_dc"], 0, 1), atol=1e-6)
    np.testing.assert_allclose(pts["splat_alpha"], alpha, atol=1e-6)
    heat = np.random.default_rng(3).uniform(0, 1, (40, 4)).astype(np.float32)
    splats.set_point_attributes(obj.data, {look.HEAT_ATTR: heat})
    look.set_heatmap_visible(obj, True)
    assert look.heatmap_visible(obj)
    np.testing.assert_allclose(_points_cloud(obj)["splat_color"], heat, atol=1e-6)
    look.set_heatmap_visible(obj, False)
    np.testing.assert_allclose(_points_cloud(obj)["splat_color"][:, :3], np.clip(0.5 + SH_C0 * v["f_dc"], 0, 1),
                               atol=1e-6)
    look.set_splat_display(obj, "SPLATS")
    assert len(_instance_matrices(obj)) > 0


def render_png(scene, path, size=64, samples=16):
    """Cycles CPU render to a PNG; returns (H, W, 4) floats, row 0 at the top."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    return render_pixels(scene, path, size)


def ortho_camera(scene, scale=4.0):
    """Camera at -Y looking along +Y; world x -> column, z -> row (64 px over ``scale`` metres)."""
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    cam.data.type = "ORTHO"
    cam.data.ortho_scale = scale
    cam.location = (0.0, -6.0, 0.0)
    cam.rotation_euler = (np.pi / 2, 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam
    scene.world = None  # black background
    return cam


def test_cycles_renders_coloured_gaussian_footprints(mods, clean_scene, tmp_path):
    splats, look, _ = mods
    pos = np.array([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    f_dc = np.array([[3.0, -3.0, -3.0], [-3.0, 3.0, -3.0]])
    _splat_object(mods, tmp_path, n=2, seed=4, positions=pos, f_dc=f_dc, opacity=np.full(2, 6.0),
                  scale=np.log(np.full((2, 3), 0.25)), rotation=np.tile([1.0, 0, 0, 0], (2, 1)))
    ortho_camera(clean_scene)
    img = render_png(clean_scene, tmp_path / "look.png")
    red, green = img[32, 16, :3], img[32, 48, :3]
    assert red[0] > 0.8 and red[1] < 0.1 and red[2] < 0.1, red
    assert green[1] > 0.8 and green[0] < 0.1 and green[2] < 0.1, green
    assert img[4, 4, :3].max() < 0.02 and img[32, 32, :3].max() < 0.05  # background, gap between the splats
    # Gaussian footprint: pixel centres 0.125 and 1.375 sigma from the splat centre (16 px per metre, sigma
    # 0.25 m) have exp(-r^2/2) = 0.992 and 0.389, a linear ratio of 0.39 (the PNG holds sRGB values)
    linear = ((img[32, [16, 10], 0] + 0.055) / 1.055) ** 2.4
    assert 0.3 < linear[1] / linear[0] < 0.5, linear
