"""Physics setup to job folder: convert, domain, interactions, and the arrays and settings they become."""

import importlib
import math
import subprocess

import bpy
import numpy as np
import pytest
from mathutils import Euler, Matrix, Vector

from backend import protocol

from .conftest import ADDON_MODULE, REPO


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _points_object(name, points, location=(0.0, 0.0, 0.0)):
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(points))
    mesh.vertices.foreach_set("co", np.ascontiguousarray(points, np.float32).ravel())
    obj = bpy.data.objects.new(name, mesh)
    obj.location = location
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    bpy.context.view_layer.update()
    return obj


@pytest.fixture
def blob(addon, clean_scene):
    clean_scene.render.fps_base = 1.0
    clean_scene.use_gravity, clean_scene.gravity = True, (0.0, 0.0, -9.81)
    rng = np.random.default_rng(0)
    return _points_object("Blob", rng.uniform(-0.5, 0.5, (400, 3)), location=(0.2, -0.1, 0.6))


def _world(obj):
    co = np.empty(len(obj.data.vertices) * 3, np.float32)
    obj.data.vertices.foreach_get("co", co)
    mw = np.array(obj.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ mw[:3, :3].T + mw[:3, 3]


def test_convert_adds_a_domain_box_around_the_object_and_readouts(addon, blob):
    s2j = _mod(addon, "core.scene_to_job")
    assert bpy.ops.splat.convert_to_particles() == {"FINISHED"}
    s = blob.splat_physics
    assert s.enabled and s.domain is not None and s.domain.empty_display_type == "CUBE"
    assert s.domain.parent == blob
    lo, hi = (np.array(v) for v in s2j.domain_bounds(blob))
    pts = _world(blob)
    assert np.all(pts >= lo) and np.all(pts <= hi)

    # Particles per cell = N / occupied cells of side (longest domain side / n_grid), counted independently.
    s.n_grid = 16
    dx = np.max(hi - lo) / 16
    cells = {tuple(c) for c in np.floor((pts - lo) / dx).astype(int)}
    assert s.occupied_cells == len(cells)
    assert s.particles_per_cell == pytest.approx(len(pts) / len(cells), rel=1e-5)

    # Scaling the domain box changes the job's bounds; moving the object carries the box along.
    s.domain.scale *= 2.0
    blob.location.x += 1.0
    bpy.context.view_layer.update()
    lo2, hi2 = (np.array(v) for v in s2j.domain_bounds(blob))
    assert np.allclose(hi2 - lo2, 2 * (hi - lo), rtol=1e-5)
    assert np.allclose((lo2 + hi2) / 2, (lo + hi) / 2 + [1.0, 0, 0], atol=1e-5)


def test_anchor_box_and_poke_become_the_jobs_mask_and_window(addon, blob, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 5, 40
    scene.render.fps, scene.render.fps_base = 30, 1.001
    scene.gravity = (0.0, 0.0, -5.0)
    bpy.ops.splat.convert_to_particles()
    s = blob.splat_physics
    s.use_ground, s.ground_height = True, 0.05
    s.material_model = "neo_hookean"

    bpy.ops.splat.add_interaction(role="ANCHOR")
    anchor = bpy.context.active_object
    anchor.location = (0.1, -0.2, 0.4)
    anchor.rotation_euler = Euler((0.3, 0.0, 0.7))
    anchor.scale = (1.5, 0.8, 2.0)
    anchor.empty_display_size = 0.2

    bpy.context.view_layer.objects.active = blob
    bpy.ops.splat.add_interaction(role="POKE")
    poke = bpy.context.active_object
    poke.location = (0.2, 0.0, 0.9)
    poke.rotation_euler = Euler((math.pi / 2, 0.0, 0.0))  # +Z arrow turned to point along -Y
    poke.empty_display_size = 0.15
    poke.splat_role.strength = 7.0
    poke.splat_role.start_frame, poke.splat_role.end_frame = 8, 20

    job, arrays = s2j.build_job(bpy.context, blob, "simulate")
    folder = s2j.write_job_folder(tmp_path / "job é", job, arrays)
    read = protocol.read_job(folder)
    scene_arrays = protocol.load_npz(read.scene_path)
    assert protocol.validate_scene(scene_arrays) == len(blob.data.vertices)

    pts = _world(blob)
    assert np.allclose(scene_arrays["positions"], pts, atol=1e-5)
    # Independently: inside the unit cube of display size in the anchor's own frame.
    m = Matrix.LocRotScale(Vector(anchor.location), anchor.rotation_euler.to_quaternion(), Vector(anchor.scale))
    inv = np.array(m.inverted())
    local = pts @ inv[:3, :3].T + inv[:3, 3]
    expected = np.all(np.abs(local) <= 0.2, axis=1)
    assert 0 < expected.sum() < len(pts)
    assert np.array_equal(scene_arrays["anchor"].astype(bool), expected)

    sim = read.simulation
    fps = 30 / 1.001
    assert sim["fps"] == pytest.approx(fps)
    assert sim["frame_start"] == 5 and sim["n_frames"] == 36
    assert sim["gravity"] == pytest.approx([0.0, 0.0, -5.0])
    assert sim["ground"] == {"height": pytest.approx(0.05), "kind": "frictional", "friction": pytest.approx(0.5)}
    assert sim["material_model"] == "neo_hookean"
    assert sim["domain_min"] == pytest.approx(s2j.domain_bounds(blob)[0])
    (p,) = sim["pokes"]
    assert p["start"] == pytest.approx((8 - 5) / fps) and p["end"] == pytest.approx((20 - 5) / fps)
    assert p["direction"] == pytest.approx([0.0, -1.0, 0.0], abs=1e-6)
    assert p["center"] == pytest.approx([0.2, 0.0, 0.9]) and p["radius"] == pytest.approx(0.15)
    assert p["strength"] == pytest.approx(7.0)
    # No stored materials yet: the object's defaults fill the arrays.
    assert np.all(scene_arrays["youngs_modulus"] == np.float32(s.youngs_modulus))
    assert "material_lock" not in scene_arrays


def test_mesh_anchor_wind_collider_and_locks(addon, blob):
    s2j = _mod(addon, "core.scene_to_job")
    scene = bpy.context.scene
    scene.use_gravity = False
    bpy.ops.splat.convert_to_particles()

    # A rotated closed mesh as anchor volume: ray parity must match the box test in its frame.
    bpy.ops.mesh.primitive_cube_add(size=0.5, location=(0.3, -0.1, 0.5), rotation=(0.4, 0.2, 0.0))
    volume = bpy.context.active_object
    blob.select_set(True)
    assert bpy.ops.splat.mark_anchor_volume() == {"FINISHED"}
    assert volume.splat_role.role == "ANCHOR" and volume.splat_role.target == blob

    bpy.context.view_layer.objects.active = blob
    bpy.ops.splat.add_interaction(role="WIND")
    wind = bpy.context.active_object
    wind.rotation_euler = Euler((0.0, math.pi / 2, 0.0))  # blows along +X
    wind.splat_role.gust_frequency, wind.splat_role.gust_amplitude = 1.5, 0.25

    bpy.context.view_layer.objects.active = blob
    bpy.ops.splat.add_interaction(role="COLLIDER")
    collider = bpy.context.active_object
    collider.scale = (1.0, 2.0, 0.5)
    for frame, x in ((1, -1.0), (11, 1.0)):
        collider.location = (x, 0.0, 0.2)
        collider.keyframe_insert("location", frame=frame)
    scene.frame_set(7)

    # The artist locks some points (lock attribute) and paints others (vertex group).
    mats = _mod(addon, "core.materials")
    mask = np.zeros(len(blob.data.vertices), bool)
    mask[:10] = True
    mats.override_materials(blob, mask, s2j.material_defaults(blob), youngs_modulus=5e6)
    group = blob.vertex_groups.new(name=mats.LOCK_GROUP)
    group.add([20, 21, 22], 1.0, "REPLACE")
    group.add([23], 0.2, "REPLACE")

    job, arrays = s2j.build_job(bpy.context, blob, "simulate")
    pts = _world(blob)
    inv = np.array(volume.matrix_world.inverted())
    local = pts @ inv[:3, :3].T + inv[:3, 3]
    expected = np.all(np.abs(local) <= 0.25, axis=1)
    assert 0 < expected.sum()
    assert np.array_equal(arrays["anchor"].astype(bool), expected)

    sim = job["simulation"]
    assert sim["gravity"] == [0.0, 0.0, 0.0]
    (w,) = sim["winds"]
    assert w["direction"] == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)
    assert (w["gust_frequency"], w["gust_amplitude"]) == pytest.approx((1.5, 0.25)) and w["end"] is None
    (c,) = sim["colliders"]
    assert len(c["times"]) == scene.frame_end - scene.frame_start + 1
    assert c["times"][10] == pytest.approx(10 / 24)
    assert c["centers"][0] == pytest.approx([-1.0, 0.0, 0.2]) and c["centers"][10] == pytest.approx([1.0, 0.0, 0.2])
    assert c["half_extents"] == pytest.approx(np.array([1.0, 2.0, 0.5]) * collider.empty_display_size)
    assert scene.frame_current == 7  # sampling put the frame back

    expected_lock = mask.copy()
    expected_lock[[20, 21, 22]] = True
    assert np.array_equal(arrays["material_lock"].astype(bool), expected_lock)
    assert np.all(arrays["youngs_modulus"][:10] == np.float32(5e6))
    assert np.all(arrays["youngs_modulus"][10:] == np.float32(blob.splat_physics.youngs_modulus))


def _backend_fill_count(job_dir) -> int:
    """The number of interior particles the backend itself adds for a job folder (its own interpreter)."""
    code = ("import sys; from backend import protocol; from backend.jobs.scene import build_particles; "
            "job = protocol.read_job(sys.argv[1]); "
            "print(build_particles(protocol.load_npz(job.scene_path), job.simulation).n_fill)")
    python = bpy.context.preferences.addons[ADDON_MODULE].preferences.backend_python
    proc = subprocess.run([python, "-c", code, str(job_dir)], capture_output=True, text=True, timeout=300,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def test_fill_preview_is_the_backends_fill(addon, clean_scene, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    rng = np.random.default_rng(1)
    d = rng.normal(size=(6000, 3))
    shell = 0.5 * d / np.linalg.norm(d, axis=1, keepdims=True)
    obj = _points_object("Shell", shell, location=(3.0, -2.0, 1.0))
    bpy.ops.splat.convert_to_particles()
    s = obj.splat_physics
    assert s.fill_mode == "AUTO"  # hollow captures are filled by default
    s.n_grid = 16
    count, centres, note = s2j.estimate_fill(obj)
    assert count > 0 and s.fill_preview_count == count and "Filled" in s.fill_preview_note
    assert np.all(np.linalg.norm(centres - np.array([3.0, -2.0, 1.0]), axis=1) < 0.5)  # all inside the shell
    # The backend, given the job the add-on writes, adds exactly the previewed particles.
    job, arrays = s2j.build_job(bpy.context, obj, "simulate")
    assert job["simulation"]["fill"]["enabled"] == "auto"
    backend_count = _backend_fill_count(s2j.write_job_folder(tmp_path / "job", job, arrays))
    print(f'{{"figure": "fill of a hollow shell", "panel_preview": {count}, "backend": {backend_count}}}')
    assert backend_count == count

    bpy.ops.splat.preview_fill()
    preview = bpy.data.objects[obj.name + " Fill Preview"]
    assert len(preview.data.vertices) == count
    bpy.context.view_layer.objects.active = obj
    bpy.ops.splat.clear_fill_preview()
    assert obj.name + " Fill Preview" not in bpy.data.objects
    s.fill_mode = "OFF"
    assert s.fill_preview_count == -1 and s2j.build_job(bpy.context, obj, "simulate")[0]["simulation"]["fill"] \
        ["enabled"] is False

    # An open bowl is left as it is (auto) and filled on request (On); a flat sheet encloses nothing.
    bowl = _points_object("Bowl", shell[shell[:, 2] < 0.0])
    bpy.ops.splat.convert_to_particles()
    bowl.splat_physics.n_grid = 16
    assert bowl.splat_physics.fill_preview_count == 0 and "open" in bowl.splat_physics.fill_preview_note
    bowl.splat_physics.fill_mode = "ON"
    assert bowl.splat_physics.fill_preview_count > 0
    flat = _points_object("Sheet", np.c_[rng.uniform(-0.5, 0.5, (2000, 2)), np.zeros(2000)])
    bpy.ops.splat.convert_to_particles()
    assert s2j.estimate_fill(flat)[0] == 0


def test_estimate_job_has_the_scene_camera_in_opencv_form(addon, blob, tmp_path):
    from bpy_extras.object_utils import world_to_camera_view

    s2j = _mod(addon, "core.scene_to_job")
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 320, 200, 50
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    scene.collection.objects.link(cam)
    scene.camera = cam
    cam.data.shift_x = 0.05
    for frame, y in ((scene.frame_start, -3.0), (scene.frame_start + 10, -6.0)):
        cam.location = (0.3, y, 0.8)
        cam.keyframe_insert("location", frame=frame)
    cam.rotation_euler = Euler((math.radians(85), 0.0, 0.0))
    scene.frame_set(scene.frame_start + 5)
    video = tmp_path / "ref.mp4"
    video.write_bytes(b"not really a video; the job only needs the path to exist")
    bpy.ops.splat.convert_to_particles()

    job, arrays = s2j.build_job(bpy.context, blob, "estimate", prior="reference", reference_video=str(video),
                                iterations=3)
    folder = s2j.write_job_folder(tmp_path / "est", job, arrays)
    est = protocol.read_job(folder).estimate
    assert est["prior"] == "reference" and est["iterations"] == 3
    # the panel's stop and learn switches reach the job with the job's own defaults
    defaults = protocol.ESTIMATE_DEFAULTS
    assert (est["stop_rule"], est["learn_nu"]) == (defaults["stop_rule"], defaults["learn_nu"]) == ("plateau", False)
    assert est["stop_tolerance"] == pytest.approx(defaults["stop_tolerance"])
    cam_d = est["camera"]
    assert (cam_d["width"], cam_d["height"]) == (160, 100)
    viewmat, K = np.array(cam_d["viewmat"]), np.array(cam_d["K"])

    scene.frame_set(scene.frame_start)  # the camera is taken at the first frame
    for p in ([0.2, -0.1, 0.6], [0.5, 0.3, 0.9], [-0.2, 0.1, 0.4]):
        pc = viewmat[:3, :3] @ p + viewmat[:3, 3]
        u, v = (K @ pc)[:2] / pc[2]
        ndc = world_to_camera_view(scene, cam, Vector(p))
        assert pc[2] == pytest.approx(ndc.z, rel=1e-5)
        assert (u, v) == pytest.approx((ndc.x * 160, (1 - ndc.y) * 100), abs=1e-3)


def test_resaving_an_unchanged_scene_keeps_the_file_for_resume(addon, blob, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    bpy.ops.splat.convert_to_particles()
    job, arrays = s2j.build_job(bpy.context, blob, "simulate")
    folder = s2j.write_job_folder(tmp_path / "j", job, arrays)
    before = (folder / protocol.SCENE_FILE).read_bytes()
    job, arrays = s2j.build_job(bpy.context, blob, "simulate")
    s2j.write_job_folder(folder, job, arrays)
    assert (folder / protocol.SCENE_FILE).read_bytes() == before
    blob.splat_physics.youngs_modulus *= 2
    job, arrays = s2j.build_job(bpy.context, blob, "simulate")
    s2j.write_job_folder(folder, job, arrays)
    assert protocol.load_npz(folder / protocol.SCENE_FILE)["youngs_modulus"][0] == np.float32(2e5)


def test_override_selected_points_and_write_a_job_for_a_farm(addon, blob, tmp_path, monkeypatch):
    import tempfile

    mats = _mod(addon, "core.materials")
    s2j = _mod(addon, "core.scene_to_job")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # an unsaved file writes its jobs to the temp dir
    bpy.ops.splat.convert_to_particles()
    for v in blob.data.vertices:
        v.select = v.index % 3 == 0
    assert bpy.ops.splat.override_materials(youngs_modulus=7e5, poisson_ratio=0.2, density=300.0) == {"FINISHED"}
    chosen = np.arange(len(blob.data.vertices)) % 3 == 0
    E = mats.read_attr(blob, "youngs_modulus")
    assert np.all(E[chosen] == np.float32(7e5)) and np.all(E[~chosen] == np.float32(blob.splat_physics.youngs_modulus))
    assert np.all(mats.read_attr(blob, "density")[chosen] == np.float32(300.0))
    assert np.array_equal(mats.read_attr(blob, mats.LOCK_ATTR).astype(bool), chosen)

    ids = np.arange(len(blob.data.vertices), dtype=np.int32) % 2  # per-point constitutive model
    attr = blob.data.attributes.new("material_id", "INT", "POINT")
    attr.data.foreach_set("value", ids)
    assert bpy.ops.splat.write_job(command="simulate") == {"FINISHED"}
    folder = s2j.job_dir_for(blob, "simulate")
    assert folder.is_relative_to(tmp_path)
    arrays = protocol.load_npz(protocol.read_job(folder).scene_path)
    assert np.array_equal(arrays["material_id"], ids)
    assert np.array_equal(arrays["material_lock"].astype(bool), chosen)
    assert np.allclose(arrays["youngs_modulus"], E)
    assert blob.splat_physics.last_message.startswith("Job written")

    assert bpy.ops.splat.clear_material_locks() == {"FINISHED"}
    assert mats.read_attr(blob, mats.LOCK_ATTR) is None
