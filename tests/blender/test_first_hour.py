"""An artist's first hour: estimation sized for the machine, helpers sized from the object, stiffness units and
presets, and the panel's labels and greying (read back through Panel.draw)."""

import importlib
import math
import tempfile
import warnings

import bpy
import numpy as np
import pytest
from mathutils import Euler

from backend import protocol
from backend.estimation import budget


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


@pytest.fixture(autouse=True)
def _unsaved_jobs_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def prefs(addon):
    p = bpy.context.preferences.addons[addon.__name__].preferences
    saved = p.device, p.found_device
    p.device, p.found_device = "auto", "cpu"  # as after Check Backend on a machine without a GPU
    yield p
    p.device, p.found_device = saved


def _shell(n, size, seed=0):
    """Points on a sphere of diameter ``size`` standing on z = 0 (a hollow capture)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * size / 2 + [0.0, 0.0, size / 2]


def _object(name, pts):
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(pts))
    mesh.vertices.foreach_set("co", np.asarray(pts, np.float32).ravel())
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.context.view_layer.update()
    return obj


@pytest.fixture
def hd_scene(addon, clean_scene, prefs):
    """The default output size (1920x1080 at 100%), a camera, and a 5,000-point object converted to particles."""
    r = clean_scene.render
    r.resolution_x, r.resolution_y, r.resolution_percentage = 1920, 1080, 100
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    clean_scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -1.5, 0.2), Euler((math.radians(90), 0.0, 0.0))
    clean_scene.camera = cam
    obj = _object("Capture", _shell(5000, 0.4))
    assert bpy.ops.splat.convert_to_particles() == {"FINISHED"}
    return obj


def test_estimate_job_from_a_default_hd_scene_is_capped_for_the_cpu(addon, hd_scene, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    s = hd_scene.splat_physics
    assert s.prior == "reference"  # what works on a CPU is offered first
    assert (s.estimate_resolution, s.estimate_max_particles) == (0, 0)  # automatic

    job, arrays = s2j.build_job(bpy.context, hd_scene, "preview")
    folder = _mod(addon, "core.job_folder").write_job_folder(tmp_path / "job", job, arrays)
    est = protocol.read_job(folder).estimate
    cpu = budget.DEVICE_DEFAULTS["cpu"]
    assert (est["camera"]["width"], est["camera"]["height"]) == (256, 144) == budget.capped_size(1920, 1080, 256)
    assert est["max_particles"] == cpu.max_particles == 3000
    # Same framing, fewer pixels: the intrinsics scale with the image.
    full = _mod(addon, "core.job_camera").camera_settings(bpy.context.scene)
    k = np.array(est["camera"]["K"])[:2, :2].diagonal() / np.array(full["K"])[:2, :2].diagonal()
    assert k[0] == pytest.approx(256 / 1920, rel=1e-3) and k[1] == pytest.approx(144 / 1080, rel=1e-3)
    assert np.allclose(est["camera"]["viewmat"], full["viewmat"])

    # The artist's own values win over the automatic ones.
    s.estimate_resolution, s.estimate_max_particles = 512, 1234
    est = s2j.build_job(bpy.context, hd_scene, "preview")[0]["estimate"]
    assert (est["camera"]["width"], est["camera"]["height"], est["max_particles"]) == (512, 288, 1234)


def test_an_estimate_that_cannot_fit_is_refused_with_the_fix(addon, hd_scene, tmp_path):
    s2j, workflow = _mod(addon, "core.scene_to_job"), _mod(addon, "core.workflow")
    s = hd_scene.splat_physics
    s.estimate_resolution, s.estimate_max_particles = 4096, 5000
    s.fill_mode = "OFF"  # the budget alone: an interior fill would add particles to what must be lowered
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not read: the refusal comes first")
    limit = 3000.0
    job, _ = s2j.build_job(bpy.context, hd_scene, "estimate", reference_video=str(video), memory_limit_mb=limit)
    proj = _mod(addon, "core.estimate_setup").estimate_projection(bpy.context, hd_scene, job["estimate"], job["simulation"])
    assert proj.memory_mb * budget.SAFETY > limit

    with pytest.raises(_mod(addon, "core.errors").SetupError) as err:
        workflow.start_estimate(bpy.context, hd_scene, reference_video=str(video), memory_limit_mb=limit)
    message = str(err.value)
    assert "run out of memory" in message and "(Estimate Materials panel)" in message
    assert not _mod(addon, "core.job_folder").job_dir_for(hd_scene, "estimate").exists()  # nothing written, nothing started

    # Each suggested change fits on its own, with everything else unchanged.
    assert "Resolution to " in message or "Max particles to " in message
    if "Resolution to " in message:
        s.estimate_resolution = int(message.split("Resolution to ")[1].split(" px")[0])
    else:
        s.estimate_max_particles = int(message.split("Max particles to ")[1].split(" or")[0].replace(",", ""))
    job, _ = s2j.build_job(bpy.context, hd_scene, "estimate", reference_video=str(video), memory_limit_mb=limit)
    assert _mod(addon, "core.estimate_setup").check_estimate_fits(bpy.context, hd_scene, job["estimate"], job["simulation"]).memory_mb > 0


def test_panel_shows_device_guidance_and_the_projection(addon, hd_scene):
    log = draw(bpy.types.SPLAT_PT_estimate)
    labels = [t for kind, t, _ in log if kind == "label"]
    assert any(t.startswith("Device: CPU") for t in labels)
    assert any("reference video" in t for t in labels)
    assert any(t.startswith("256×144 px, 3,000 particles: about") and "per iteration" in t for t in labels)


@pytest.mark.parametrize("size", [0.2, 20.0])
def test_new_helpers_are_sized_and_placed_from_the_object(addon, clean_scene, prefs, size):
    s2j = _mod(addon, "core.scene_to_job")
    obj = _object("Thing", _shell(4000, size, seed=1) + [3 * size, 0.0, 0.0])
    bpy.ops.splat.convert_to_particles()
    pts = _mod(addon, "core.points").world_positions(obj)
    lo, hi = pts.min(0), pts.max(0)

    bpy.ops.splat.add_interaction(role="ANCHOR")
    anchor = bpy.context.active_object
    bpy.context.view_layer.update()
    job, arrays = s2j.build_job(bpy.context, obj, "simulate")
    held = arrays["anchor"].astype(bool)
    # The lowest tenth of the height, not the whole object.
    assert 0.03 < held.mean() < 0.2
    assert pts[held, 2].max() <= lo[2] + 0.1 * (hi[2] - lo[2]) + 0.03 * size
    assert held[pts[:, 2] < lo[2] + 0.05 * (hi[2] - lo[2])].all()

    bpy.context.view_layer.objects.active = obj
    bpy.ops.splat.add_interaction(role="POKE")
    bpy.context.view_layer.update()
    (poke,) = s2j.build_job(bpy.context, obj, "simulate")[0]["simulation"]["pokes"]
    centre = np.array(poke["center"])
    assert np.min(np.linalg.norm(pts - centre, axis=1)) < 1e-6 * size + 1e-9  # on the surface: one of its points
    assert centre[2] >= hi[2] - 0.1 * (hi[2] - lo[2]) - 1e-6  # near the top
    inward = (pts.mean(0) - centre)[:2]
    assert np.dot(poke["direction"][:2], inward) > 0.5 * np.linalg.norm(inward)  # facing the object
    extent = float(np.max(hi - lo))
    assert poke["radius"] == pytest.approx(0.15 * extent, rel=1e-4)
    touched = np.linalg.norm(pts - centre, axis=1) <= poke["radius"]
    assert 0.0 < touched.mean() < 0.2

    bpy.context.view_layer.objects.active = obj
    bpy.ops.splat.add_interaction(role="WIND")
    wind = bpy.context.active_object
    assert wind.empty_display_size == pytest.approx(0.5 * extent, rel=1e-5)
    domain = np.array(_mod(addon, "core.domain").domain_bounds(obj))
    assert np.max(domain[1] - domain[0]) == pytest.approx(1.5 * extent, rel=1e-4)
    assert anchor.splat_role.target == obj


def test_presets_set_model_stiffness_poisson_and_density_together(addon, hd_scene):
    mats = _mod(addon, "core.materials")
    s = hd_scene.splat_physics
    for key, (_label, model, E, nu, rho, _desc) in mats.MATERIAL_PRESETS.items():
        assert bpy.ops.splat.material_preset(preset=key) == {"FINISHED"}
        assert s.material_model == model
        assert s.youngs_modulus == pytest.approx(E, rel=1e-6)
        assert s.poisson_ratio == pytest.approx(nu, rel=1e-6) and s.density == pytest.approx(rho, rel=1e-6)
    bpy.ops.splat.material_preset(preset="rubber")
    assert (s.stiffness_unit, s.stiffness) == ("MPa", pytest.approx(2.0))
    bpy.ops.splat.material_preset(preset="wood")
    assert (s.stiffness_unit, s.stiffness) == ("GPa", pytest.approx(10.0))
    s.stiffness_unit = "kPa"
    s.stiffness = 250.0  # typed in kPa
    assert s.youngs_modulus == pytest.approx(2.5e5)
    assert mats.format_pa(2.5e5) == "250 kPa" and mats.format_pa(3e9) == "3 GPa"


def test_panels_show_units_grey_what_does_not_apply_and_stay_without_a_selection(addon, hd_scene):
    s = hd_scene.splat_physics
    s.youngs_modulus, s.stiffness_unit = 2.0e6, "MPa"
    log = draw(bpy.types.SPLAT_PT_material)
    assert ("prop", "Stiffness E (MPa)", True) in log and ("prop", "stiffness_unit", True) in log
    assert ("menu", "splat.material_preset", True) in log

    # Per-point values come first; the unused object defaults below are greyed.
    mats = _mod(addon, "core.materials")
    mats.override_materials(hd_scene, np.ones(5000, bool), {"youngs_modulus": 1e4, "poisson_ratio": 0.3,
                                                           "density": 800.0}, youngs_modulus=3e4, lock=False)
    log = draw(bpy.types.SPLAT_PT_material)
    labels = [t for k, t, _ in log if k == "label"]
    assert labels.index("Per-point values (from the attributes)") < labels.index(
        "Defaults (unused: every point has its own values)")
    assert "Stiffness 5% 30 kPa · 50% 30 kPa · 95% 30 kPa" in labels
    assert ("prop", "Stiffness E (MPa)", False) in log

    s.walls_kind = "slip"
    assert ("prop", "walls_friction", False) in draw(bpy.types.SPLAT_PT_forces)
    s.walls_kind = "frictional"
    assert ("prop", "walls_friction", True) in draw(bpy.types.SPLAT_PT_forces)

    bpy.ops.splat.add_interaction(role="POKE")
    poke = bpy.context.active_object
    log = draw(bpy.types.SPLAT_PT_interactions)
    assert ("prop", "radius", True) in log and ("prop", "empty_display_size", True) not in log
    radius = poke.splat_role.bl_rna.properties["radius"]
    assert "pushed" in radius.description and radius.unit == "LENGTH"
    poke.splat_role.radius = 0.07
    assert poke.empty_display_size == pytest.approx(0.07)

    for ob in bpy.context.selected_objects:
        ob.select_set(False)
    bpy.context.view_layer.objects.active = None
    assert bpy.types.SPLAT_PT_physics.poll(bpy.context)  # the tab stays
    assert ("label", "Select a splat object or a point mesh", True) in draw(bpy.types.SPLAT_PT_physics)
    assert not bpy.types.SPLAT_PT_material.poll(bpy.context)


def test_stage_message_is_not_shown_twice(addon, hd_scene):
    panel = importlib.import_module(f"{addon.__name__}.panels.physics_panel")
    runner = type("R", (), {"last_progress": None, "stage_message": "Loading the model", "fraction": 0.0})()
    job = type("J", (), {"runner": runner, "label": hd_scene.name})()
    jobs = _mod(addon, "backend.client.registry")
    real = jobs.active
    jobs.active = lambda kind: job
    try:
        log = []
        panel.draw_job(Layout(log), "estimate", hd_scene)
    finally:
        jobs.active = real
    assert [t for k, t, _ in log if "Loading the model" in t] == ["Loading the model"]


def test_a_blend_relative_reference_video_is_accepted(addon, hd_scene, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    s = hd_scene.splat_physics
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Blender warns (and may drop it) when a path property refuses '//'
        s.reference_video = "//clips/ref.mp4"
    assert s.reference_video == "//clips/ref.mp4"
    with pytest.raises(_mod(addon, "core.errors").SetupError, match="not saved"):
        s2j.build_job(bpy.context, hd_scene, "estimate")
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "ref.mp4").write_bytes(b"x")
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "scene.blend"))
    try:
        est = s2j.build_job(bpy.context, hd_scene, "estimate")[0]["estimate"]
        assert est["reference_video"] == str(tmp_path / "clips" / "ref.mp4")
    finally:
        bpy.ops.wm.read_homefile(use_empty=True)  # back to an unsaved file for the tests that follow
    assert not bpy.data.filepath and hasattr(bpy.types, "SPLAT_PT_physics")


# ---------------------------------------------------------------------------- a recording UILayout
class Layout:
    """Records (kind, text or property name, active) for every label, prop and operator drawn."""

    def __init__(self, log, active=True):
        self.log, self._parent_active = log, active
        self.use_property_split = False
        self.active = True
        self.alignment = "EXPAND"
        self.enabled = True

    def _on(self):
        return self._parent_active and self.active

    def _child(self, *args, **kwargs):
        return Layout(self.log, self._on())

    row = column = box = split = grid_flow = column_flow = _child

    def prop(self, data, name, text=None, **kwargs):
        assert name in data.bl_rna.properties, f"{type(data).__name__} has no property {name!r}"
        self.log.append(("prop", name if text in (None, "") else text, self._on()))

    def operator(self, idname, text="", **kwargs):
        self.log.append(("operator", idname, self._on()))
        return type("Props", (), {})()

    def operator_menu_enum(self, idname, prop, **kwargs):
        self.log.append(("menu", idname, self._on()))

    def label(self, text="", **kwargs):
        self.log.append(("label", text, self._on()))

    def progress(self, text="", factor=0.0, type="BAR"):
        self.log.append(("progress", text, self._on()))

    def separator(self, **kwargs):
        pass


def draw(panel_cls):
    log = []
    holder = type("PanelSelf", (), {"layout": Layout(log)})()
    panel_cls.draw(holder, bpy.context)
    return log


def test_a_gpu_found_by_check_backend_changes_the_guidance_and_the_defaults(addon, hd_scene, prefs):
    s2j = _mod(addon, "core.scene_to_job")
    ops = importlib.import_module(f"{addon.__name__}.operators.backend_ops")
    saved = prefs.found_gpu, prefs.found_models
    try:
        ops.remember_device(prefs, {"device": {"cuda": True, "gpu": "NVIDIA H200", "gpu_memory_gb": 139.8},
                                    "models": [{"kind": "svd", "ok": True}, {"kind": "modelscope", "ok": False}]})
        where, why, best = _mod(addon, "core.estimate_setup").device_guidance()
        assert where == "Device: NVIDIA H200, 139.8 GB" and best == "svd" and "SVD" in why
        hd_scene.splat_physics.prior = "svd"
        assert _mod(addon, "core.estimate_setup").estimation_size(hd_scene) == (1024, 100_000)  # SVD-xt's native long side on the GPU
        ops.remember_device(prefs, {"device": {"cuda": False}, "models": []})
        where, why, best = _mod(addon, "core.estimate_setup").device_guidance()
        assert where == "Device: CPU (no GPU found)" and best == "reference"
        assert _mod(addon, "core.estimate_setup").estimation_size(hd_scene) == (256, 3000)
        prefs.device = "cuda"  # an explicit choice wins over what was found
        assert _mod(addon, "core.estimate_setup").estimation_device() == "cuda"
    finally:
        prefs.found_gpu, prefs.found_models = saved


def test_out_of_memory_advice_names_the_panels_settings(addon):
    import signal

    workflow, runner = _mod(addon, "core.workflow"), _mod(addon, "backend.client.runner")
    killed = runner.RunResult(runner.RunState.FAILED, -signal.SIGKILL, "", None)
    text = workflow.explain_failure(killed, what=workflow.ESTIMATE)
    assert "out of memory" in text and "Max particles or Resolution in the Estimate Materials panel" in text
    assert "Grid resolution" in workflow.explain_failure(killed, what=workflow.SIMULATE)
