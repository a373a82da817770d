"""Simulate & Bake end to end with the real backend: bake, resume, a second target, a failed rerun, free."""

import importlib
import os
from pathlib import Path

import bpy
import numpy as np
import pytest

from backend import protocol


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _cube(n_side=5, size=0.1, z0=0.05):
    g = (np.arange(n_side) + 0.5) / n_side * size - size / 2
    x, y, z = np.meshgrid(g, g, g + z0 + size / 2, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


@pytest.fixture
def saved_scene(addon, clean_scene, tmp_path):
    """A cube of points resting above a ground, in a .blend saved under tmp_path; an empty file afterwards."""
    mesh = bpy.data.meshes.new("Jelly")
    pts = _cube()
    mesh.vertices.add(len(pts))
    mesh.vertices.foreach_set("co", pts.astype(np.float32).ravel())
    obj = bpy.data.objects.new("Jelly", mesh)
    clean_scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    clean_scene.frame_start, clean_scene.frame_end = 1, 3
    clean_scene.render.fps_base = 1.0
    clean_scene.use_gravity, clean_scene.gravity = True, (0.0, 0.0, -9.81)
    bpy.ops.splat.convert_to_particles()
    s = obj.splat_physics
    s.n_grid, s.youngs_modulus, s.density = 16, 2e4, 500.0
    s.use_ground, s.ground_height, s.ground_kind = True, 0.0, "sticky"
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "jelly scène.blend"))
    yield obj
    bpy.ops.wm.read_homefile(use_empty=True)  # later tests expect an unsaved file


def _frame_positions(job_dir, frame):
    return protocol.load_npz(Path(job_dir) / "out" / "frames" / protocol.frame_file_name(frame))["positions"]


def test_simulate_bake_resume_retarget_fail_and_free(addon, saved_scene, tmp_path):
    jobs = _mod(addon, "backend.client.registry")
    workflow = _mod(addon, "core.workflow")
    s2j = _mod(addon, "core.scene_to_job")
    splats = _mod(addon, "core.splat_objects")
    bake = _mod(addon, "core.bake")
    obj = saved_scene
    scene = bpy.context.scene

    # The panel's projected size is the bake module's estimate for this object and range.
    assert workflow.projected_bake_size(obj, "gn_cache") == bake.estimate_bake_size("gn_cache", 125, 3)

    assert bpy.ops.splat.simulate_bake() == {"FINISHED"}  # background mode: waits for the run
    s = obj.splat_physics
    assert s.last_level == "INFO" and s.last_message.startswith("Baked 3 frames to //splat_cache/"), s.last_message
    job_dir = _mod(addon, "core.job_folder").job_dir_for(obj, "simulate")
    assert job_dir == tmp_path / "splat_jobs" / "Jelly" / "simulate"
    record = bake.bake_record(obj)
    assert record["target"] == "gn_cache" and record["path"].startswith("//splat_cache/")
    cache = Path(bpy.path.abspath(record["path"]))
    assert cache.is_dir() and cache.is_relative_to(tmp_path)

    # The baked object plays the simulated frames (world = local: the object has no transform).
    scene.frame_set(3)
    played = splats.evaluated_points(obj)["positions"]
    assert np.allclose(played, _frame_positions(job_dir, 3), atol=1e-5)
    assert played[:, 2].mean() < _cube()[:, 2].mean()  # it fell under gravity

    # A longer range resumes: frames 1-3 are reused from the checkpoint, only 4-5 are simulated.
    stamps = {f: (job_dir / "out" / "frames" / protocol.frame_file_name(f)).stat().st_mtime_ns for f in (1, 2, 3)}
    scene.frame_end = 5
    active = workflow.start_simulate(bpy.context, obj, target="pc2")
    result = jobs.wait(workflow.SIMULATE, timeout=300)
    assert result.ok, obj.splat_physics.last_message
    assert any(e.kind == "warning" and "Resuming" in e.message for e in active.runner.events)
    assert all((job_dir / "out" / "frames" / protocol.frame_file_name(f)).stat().st_mtime_ns == t
               for f, t in stamps.items())
    record = bake.bake_record(obj)
    assert record["target"] == "pc2" and (record["frame_start"], record["frame_end"]) == (1, 5)
    assert (cache / "meta").is_dir()  # the gn_cache bake of the other target is kept
    pc2_file = Path(bpy.path.abspath(record["path"]))
    assert pc2_file.is_file() and pc2_file.stat().st_size == 32 + 125 * 12 * 5  # header + positions

    # A rerun that fails (here: a backend that cannot start) leaves the last bake in place.
    prefs = bpy.context.preferences.addons[addon.__name__].preferences
    saved_python = prefs.backend_python
    prefs.backend_python = str(tmp_path / "no python here")
    try:
        with pytest.raises(RuntimeError, match="interpreter was not found"):
            bpy.ops.splat.simulate_bake()
    finally:
        prefs.backend_python = saved_python
    assert bake.bake_record(obj) == record and pc2_file.is_file()

    assert bpy.ops.splat.free_bake() == {"FINISHED"}
    assert bake.bake_record(obj) is None and not pc2_file.exists() and not cache.exists()  # both targets freed
    assert obj.splat_physics.last_message == "Bake freed"
    assert os.path.isdir(job_dir)  # the simulation itself is kept for the next bake
