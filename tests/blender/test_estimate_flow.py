"""Estimate Materials through the flow the operator uses, against the real backend: a reference video made by
the backend's preview of known materials, a short estimate, the attributes and heat map it leaves, locks,
and a cancelled run that leaves the previous materials alone."""

import importlib
import tempfile
import math
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from mathutils import Euler

from backend import protocol

N_SIDE = 6  # 216 points
TRUE_E = 6.0e4
START_E = 1.0e4
DEFAULTS = {"youngs_modulus": START_E, "poisson_ratio": 0.3, "density": 500.0}
FAST = {"frames_per_group": 3, "boost_groups": 1, "field": "global", "max_particles": 0}


@pytest.fixture(autouse=True)
def _unsaved_jobs_in_tmp(tmp_path, monkeypatch):
    """Job folders of an unsaved .blend go to the temp dir: keep this test's inside its tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _cube(n_side=N_SIDE, size=0.4, z0=0.02):
    g = (np.arange(n_side) + 0.5) / n_side * size - size / 2
    x, y, z = np.meshgrid(g, g, g + z0 + size / 2, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


@pytest.fixture
def jelly(addon, clean_scene):
    """A coloured cube of points on the ground, a poke, and a 32x32 camera looking at it."""
    pts = _cube()
    mesh = bpy.data.meshes.new("Jelly")
    mesh.vertices.add(len(pts))
    mesh.vertices.foreach_set("co", pts.astype(np.float32).ravel())
    obj = bpy.data.objects.new("Jelly", mesh)
    clean_scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    splats = _mod(addon, "core.splat_objects")
    splats.ensure_splat_attributes(obj)
    rgb = np.clip((pts - pts.min(0)) / np.ptp(pts, 0), 0, 1)  # a gradient so motion shows in the image
    splats.set_point_attributes(mesh, {f"f_dc_{i}": ((rgb[:, i] - 0.5) / splats.SH_C0).astype(np.float32)
                                       for i in range(3)})
    clean_scene.frame_start, clean_scene.frame_end = 1, 4
    clean_scene.render.fps, clean_scene.render.fps_base = 24, 1.0
    clean_scene.render.resolution_x = clean_scene.render.resolution_y = 32
    clean_scene.render.resolution_percentage = 100
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    clean_scene.collection.objects.link(cam)
    cam.location = (0.0, -1.8, 0.3)
    cam.rotation_euler = Euler((math.radians(90), 0.0, 0.0))
    clean_scene.camera = cam
    bpy.ops.splat.convert_to_particles()
    s = obj.splat_physics
    s.n_grid, s.youngs_modulus, s.density = 16, START_E, 500.0
    s.use_ground, s.ground_kind = True, "sticky"
    bpy.ops.splat.add_interaction(role="POKE")
    poke = bpy.context.active_object
    poke.location = (0.0, 0.0, 0.4)
    poke.rotation_euler = Euler((0.0, math.radians(90), 0.0))  # pushes along +X
    poke.empty_display_size = 0.15
    poke.splat_role.strength, poke.splat_role.start_frame, poke.splat_role.end_frame = 30.0, 1, 3
    bpy.context.view_layer.objects.active = obj
    return obj


_CLIP = {}  # the jelly scene is the same in every test: render its reference clip once per session


def _reference_video(addon, obj) -> Path:
    """Frames of the cube moving with TRUE_E, rendered by the backend's preview job."""
    jobs, workflow, mats = (_mod(addon, n) for n in ("backend.client.registry", "core.workflow", "core.materials"))
    if _CLIP.get("frames") is None or not _CLIP["frames"].is_dir():
        n = mats.point_count(obj)
        mats.override_materials(obj, np.ones(n, bool), DEFAULTS, youngs_modulus=TRUE_E, lock=False)
        workflow.start_preview(bpy.context, obj, **FAST)
        result = jobs.wait(workflow.PREVIEW, timeout=300)
        assert result.ok, obj.splat_physics.last_message
        assert obj.splat_physics.last_message.startswith("Preview rendered")
        _CLIP["frames"] = workflow.job_folder.job_dir_for(obj, "preview") / "out" / protocol.PREVIEW_FRAMES_DIR
        assert len(list(_CLIP["frames"].glob("*.png"))) == FAST["frames_per_group"]
        for name in mats.MATERIAL_ATTRS + (mats.LOCK_ATTR,):
            mats.remove_attr(obj, name)  # start the estimate from the object's defaults
    return _CLIP["frames"]


def test_estimate_writes_materials_heatmap_and_keeps_locks(addon, jelly):
    jobs, workflow, mats = (_mod(addon, n) for n in ("backend.client.registry", "core.workflow", "core.materials"))
    panel = _mod(addon, "panels.physics_panel")
    obj = jelly
    video = _reference_video(addon, obj)
    n = mats.point_count(obj)
    locked = np.zeros(n, bool)
    locked[:20] = True
    mats.override_materials(obj, locked, DEFAULTS, youngs_modulus=2.0e6)
    obj.splat_physics.show_heatmap = True

    active = workflow.start_estimate(bpy.context, obj, prior="reference", reference_video=str(video),
                                     iterations=2, **FAST)
    result = jobs.wait(workflow.ESTIMATE, timeout=600)
    assert result.ok, obj.splat_physics.last_message
    assert obj.splat_physics.last_message.startswith("Materials estimated")
    text = panel.progress_text(active.runner)
    assert text.startswith("Iteration 2/2") and "loss" in text

    E, nu, rho = (mats.read_attr(obj, k) for k in mats.MATERIAL_ATTRS)
    for a in (E, nu, rho):
        assert a is not None and a.shape == (n,) and np.all(np.isfinite(a)) and np.all(a > 0)
    assert np.all(nu < 0.5)
    est = protocol.load_npz(workflow.job_folder.job_dir_for(obj, "estimate") / "out" / protocol.MATERIALS_FILE)
    assert np.allclose(E, est["youngs_modulus"], rtol=1e-6)
    assert np.allclose(E[locked], 2.0e6, rtol=1e-3)  # the artist's override survived the estimation
    assert not np.allclose(E[~locked], START_E, rtol=1e-3)  # and the rest was estimated

    # Heat map: colour = fixed ramp at (log10 E - min) / (max - min); brighter means stiffer.
    heat = mats.read_attr(obj, mats.HEAT_ATTR)[:, :3]
    logE = np.log10(E.astype(np.float64))
    t = (logE - logE.min()) / (logE.max() - logE.min())
    assert np.allclose(heat, mats.ramp(t), atol=1e-5)
    order = np.argsort(logE)
    luminance = heat[order] @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) >= -1e-6)
    s = obj.splat_physics
    assert s.heat_min_E == pytest.approx(E.min(), rel=1e-4) and s.heat_max_E == pytest.approx(E.max(), rel=1e-4)
    assert s.heat_p5 <= s.heat_p50 <= s.heat_p95
    assert s.heat_p50 == pytest.approx(float(np.percentile(E, 50)), rel=1e-4)


class _ProgressLayout:
    """Enough of UILayout for draw_job: records the progress bar and the Cancel button."""

    def __init__(self, log):
        self.log = log

    def column(self, **kwargs):
        return self

    def progress(self, text="", factor=0.0, type="BAR"):
        self.log.append(("progress", text, factor, type))

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def operator(self, idname, **kwargs):
        self.log.append(("operator", idname))
        return type("Props", (), {})()


def test_a_cancelled_estimate_keeps_the_previous_materials(addon, jelly):
    jobs, workflow, mats = (_mod(addon, n) for n in ("backend.client.registry", "core.workflow", "core.materials"))
    panel = _mod(addon, "panels.physics_panel")
    obj = jelly
    n = mats.point_count(obj)
    video = _reference_video(addon, obj)
    mats.override_materials(obj, np.ones(n, bool), DEFAULTS, youngs_modulus=3.3e4, poisson_ratio=0.25, density=700.0,
                            lock=False)
    before = {k: mats.read_attr(obj, k).copy() for k in mats.MATERIAL_ATTRS}
    active = workflow.start_estimate(bpy.context, obj, prior="reference", reference_video=str(video),
                                     iterations=500, **FAST)
    deadline = time.monotonic() + 60
    while not any(e.kind == "start" for e in active.runner.events) and time.monotonic() < deadline:
        jobs.tick_all()
        time.sleep(0.02)
    log = []
    assert panel.draw_job(_ProgressLayout(log), workflow.ESTIMATE, obj)
    assert log[0][0] == "progress" and log[0][3] == "BAR" and ("operator", "splat.cancel_job") in log

    assert jobs.cancel(workflow.ESTIMATE)
    result = jobs.wait(workflow.ESTIMATE, timeout=120)
    assert result.state.value == "cancelled"
    assert obj.splat_physics.last_level == "WARNING" and "cancelled" in obj.splat_physics.last_message
    for k, v in before.items():
        assert np.array_equal(mats.read_attr(obj, k), v)
    assert not panel.draw_job(_ProgressLayout([]), workflow.ESTIMATE, obj)  # the bar is gone
