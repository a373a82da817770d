"""Camera conversion against Blender itself: world_to_camera_view with real bpy.

Imports only numpy, bpy and backend.render.camera (no torch), so it also runs in the
bpy 5.0 environment.
"""

import math
import zlib

import numpy as np
import pytest

from backend.render.camera import Camera, CameraError, camera_from_blender, look_at, orbit_cameras

bpy = pytest.importorskip("bpy")
from bpy_extras.object_utils import world_to_camera_view  # noqa: E402
from mathutils import Euler, Matrix, Vector  # noqa: E402

pytestmark = pytest.mark.blender

# (lens, sensor_w, sensor_h, fit, shift_x, shift_y, res_x, res_y, aspect_x, aspect_y)
CASES = [
    (50.0, 36.0, 24.0, "AUTO", 0.0, 0.0, 64, 48, 1.0, 1.0),
    (35.0, 36.0, 24.0, "AUTO", 0.1, -0.2, 48, 80, 1.0, 1.0),  # portrait: AUTO fits the height
    (28.0, 32.0, 18.0, "HORIZONTAL", -0.15, 0.05, 40, 90, 1.0, 1.0),
    (85.0, 36.0, 20.0, "VERTICAL", 0.3, 0.25, 120, 50, 1.0, 1.0),
    (50.0, 36.0, 24.0, "VERTICAL", 0.0, 0.1, 50, 70, 1.0, 1.0),
    (40.0, 30.0, 30.0, "AUTO", 0.2, 0.1, 64, 60, 2.0, 1.0),  # wide pixels make the frame wider
    (40.0, 30.0, 30.0, "AUTO", -0.1, 0.2, 64, 60, 1.0, 1.5),  # tall pixels: AUTO picks vertical
    (60.0, 24.0, 36.0, "HORIZONTAL", 0.05, -0.3, 33, 71, 1.3, 0.7),
    (60.0, 24.0, 36.0, "VERTICAL", 0.05, -0.3, 91, 37, 0.8, 1.1),
]


@pytest.fixture(scope="module")
def scene_and_camera():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    cam_data = bpy.data.cameras.new("cam")
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    scene.camera = cam
    yield scene, cam
    bpy.data.objects.remove(cam)
    bpy.data.cameras.remove(cam_data)


def _set_blender_camera(scene, cam, case, matrix_world):
    lens, sw, sh, fit, sx, sy, rx, ry, ax, ay = case
    d = cam.data
    d.type = "PERSP"
    d.lens, d.sensor_width, d.sensor_height, d.sensor_fit = lens, sw, sh, fit
    d.shift_x, d.shift_y = sx, sy
    r = scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = rx, ry, 100
    r.pixel_aspect_x, r.pixel_aspect_y = ax, ay
    cam.matrix_world = matrix_world
    bpy.context.view_layer.update()


def _our_camera(scene, cam) -> Camera:
    d, r = cam.data, scene.render
    return camera_from_blender(
        matrix_world=[list(row) for row in cam.matrix_world],
        lens=d.lens, sensor_width=d.sensor_width, sensor_height=d.sensor_height, sensor_fit=d.sensor_fit,
        shift_x=d.shift_x, shift_y=d.shift_y,
        resolution_x=r.resolution_x * r.resolution_percentage // 100,
        resolution_y=r.resolution_y * r.resolution_percentage // 100,
        pixel_aspect_x=r.pixel_aspect_x, pixel_aspect_y=r.pixel_aspect_y,
        clip_start=d.clip_start, clip_end=d.clip_end,
    )


def _points_in_view(rng, cam_matrix, n=40):
    # Points in front of the camera, spread over (and a bit beyond) its frame.
    local = np.stack([rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), -rng.uniform(1.0, 8.0, n)], axis=1)
    M = np.array(cam_matrix)
    return local @ M[:3, :3].T + M[:3, 3]


@pytest.mark.parametrize("case", CASES, ids=[f"{c[3]}-{c[6]}x{c[7]}-asp{c[8]}:{c[9]}" for c in CASES])
def test_projection_matches_world_to_camera_view(scene_and_camera, case):
    scene, cam = scene_and_camera
    rng = np.random.default_rng(zlib.crc32(repr(case).encode()))
    for trial in range(3):
        rot = Euler(rng.uniform(-math.pi, math.pi, 3)).to_matrix().to_4x4()
        scale = Matrix.Diagonal(Vector((*rng.uniform(0.5, 2.0, 3), 1.0)))  # object scale must not matter
        world = Matrix.Translation(Vector(rng.uniform(-3, 3, 3))) @ rot @ scale
        _set_blender_camera(scene, cam, case, world)
        ours = _our_camera(scene, cam)
        pts = _points_in_view(rng, cam.matrix_world.normalized())
        uv, z = ours.project(pts)
        W, H = ours.width, ours.height
        for p, (u, v), zz in zip(pts, uv, z):
            ref = world_to_camera_view(scene, cam, Vector(p))
            assert zz == pytest.approx(ref.z, rel=1e-6, abs=1e-6)
            assert u == pytest.approx(ref.x * W, abs=1e-3)
            assert v == pytest.approx((1.0 - ref.y) * H, abs=1e-3)


def test_resolution_percentage_is_applied_by_caller(scene_and_camera):
    scene, cam = scene_and_camera
    _set_blender_camera(scene, cam, CASES[1], Matrix.Translation(Vector((0, -5, 1))))
    scene.render.resolution_percentage = 50
    ours = _our_camera(scene, cam)
    assert (ours.width, ours.height) == (24, 40)
    p = Vector((0.3, 0.0, 1.2))
    ref = world_to_camera_view(scene, cam, p)
    (u, v), _ = ours.project(np.array(p))
    assert u == pytest.approx(ref.x * 24, abs=1e-3) and v == pytest.approx((1 - ref.y) * 40, abs=1e-3)


def test_look_at_and_orbit_keep_target_centred():
    cams = orbit_cameras(target=(0.5, -1.0, 0.3), radius=4.0, n_views=7, width=64, height=48, elevation_deg=25)
    for c in cams:
        (u, v), z = c.project(np.array([0.5, -1.0, 0.3]))
        assert (u, v) == pytest.approx((32.0, 24.0), abs=1e-9)
        assert z == pytest.approx(4.0)
        # world up (+Z) appears upward in the image (smaller v)
        (_, v_up), _ = c.project(np.array([0.5, -1.0, 0.8]))
        assert v_up < 24.0
    # full sweep: no repeated first view, evenly spaced
    pos = np.array([c.campos for c in cams])
    gaps = np.linalg.norm(np.roll(pos, -1, axis=0) - pos, axis=1)
    assert np.allclose(gaps, gaps[0])
    vm = look_at((3, 0, 0), (0, 0, 0))
    assert np.allclose(vm[:3, :3] @ vm[:3, :3].T, np.eye(3))


def test_camera_roundtrips_through_json_dict():
    import json

    c = orbit_cameras((0, 0, 0), 3.0, 1, 40, 30)[0]
    c2 = Camera.from_dict(json.loads(json.dumps(c.to_dict())))
    assert np.array_equal(c.viewmat, c2.viewmat) and np.array_equal(c.K, c2.K)
    assert (c2.width, c2.height, c2.near, c2.far) == (c.width, c.height, c.near, c.far)


def test_bad_camera_input_gives_clear_errors():
    with pytest.raises(CameraError, match="sensor_fit"):
        camera_from_blender(np.eye(4), 50, 36, 24, 64, 64, sensor_fit="DIAGONAL")
    with pytest.raises(CameraError, match="Perspective"):
        camera_from_blender(np.eye(4), 50, 36, 24, 64, 64, type="ORTHO")
    with pytest.raises(CameraError, match="lens"):
        camera_from_blender(np.eye(4), 0.0, 36, 24, 64, 64)
    with pytest.raises(CameraError, match="missing"):
        Camera.from_dict({"K": np.eye(3).tolist()})
    with pytest.raises(CameraError, match="parallel"):
        look_at((0, 0, 5), (0, 0, 0))
