"""Errors in the artist's words, and a scene left as it was: bad objects, no backend, unsaved file, no GPU,
a killed backend."""

import importlib
import tempfile
import os
import signal
import time

import bpy
import numpy as np
import pytest

from backend import protocol


@pytest.fixture(autouse=True)
def _unsaved_jobs_in_tmp(tmp_path, monkeypatch):
    """Job folders of an unsaved .blend go to the temp dir: keep this test's inside its tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _points_object(name, points):
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(points))
    if len(points):
        mesh.vertices.foreach_set("co", np.ascontiguousarray(points, np.float32).ravel())
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj


def _cube(n_side=5, size=0.1, z0=0.05):
    g = (np.arange(n_side) + 0.5) / n_side * size - size / 2
    x, y, z = np.meshgrid(g, g, g + z0 + size / 2, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)


def _snapshot():
    return ({o.name for o in bpy.data.objects},
            {m.name: sorted(a.name for a in m.attributes) for m in bpy.data.meshes})


@pytest.fixture
def prefs(addon):
    p = bpy.context.preferences.addons[addon.__name__].preferences
    saved = p.backend_python, p.device, p.svd_model
    yield p
    p.backend_python, p.device, p.svd_model = saved


OPS = ("convert_to_particles", "estimate_materials", "simulate_bake", "write_job")


@pytest.mark.parametrize("op", OPS)
def test_an_object_without_points_is_refused_and_nothing_is_added(addon, clean_scene, op):
    s2j = _mod(addon, "core.scene_to_job")
    obj = _points_object(f"Empty {op}", np.zeros((0, 3)))
    before = _snapshot()
    with pytest.raises(RuntimeError, match="has no points to simulate"):
        getattr(bpy.ops.splat, op)()
    assert _snapshot() == before
    assert obj.splat_physics.last_level == "ERROR" and "no points" in obj.splat_physics.last_message
    assert not obj.splat_physics.enabled and obj.splat_physics.domain is None
    for command in ("simulate", "estimate"):
        assert not _mod(addon, "core.job_folder").job_dir_for(obj, command).exists()


@pytest.mark.parametrize("op", OPS)
def test_nan_positions_are_refused_and_nothing_is_added(addon, clean_scene, op):
    pts = _cube()
    pts[[3, 7]] = np.nan
    obj = _points_object(f"NaN {op}", pts)
    before = _snapshot()
    with pytest.raises(RuntimeError, match=r"2 of 125 points with invalid \(NaN or infinite\) positions"):
        getattr(bpy.ops.splat, op)()
    assert _snapshot() == before
    assert obj.splat_physics.domain is None


@pytest.mark.parametrize("op", ("estimate_materials", "simulate_bake"))
def test_no_backend_configured_says_how_to_set_one_up(addon, clean_scene, prefs, op):
    s2j = _mod(addon, "core.scene_to_job")
    obj = _points_object(f"NoBackend {op}", _cube())
    bpy.ops.splat.convert_to_particles()
    prefs.backend_python = ""
    with pytest.raises(RuntimeError, match="No backend is set up.*Install Backend"):
        getattr(bpy.ops.splat, op)()
    assert not _mod(addon, "core.job_folder").job_dir_for(obj, "simulate").exists() and not _mod(addon, "core.job_folder").job_dir_for(obj, "estimate").exists()


@pytest.mark.parametrize("prior, camera, expected", [
    ("svd", False, "needs an active camera"),
    ("modelscope", True, "needs a prompt describing the motion"),
    ("reference", True, "reference_video is needed by the reference prior"),
])
def test_estimate_inputs_the_prior_needs_are_asked_for(addon, clean_scene, prior, camera, expected):
    s2j = _mod(addon, "core.scene_to_job")
    obj = _points_object(f"Prior {prior}", _cube())
    bpy.ops.splat.convert_to_particles()
    if camera:
        cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
        clean_scene.collection.objects.link(cam)
        clean_scene.camera = cam
    obj.splat_physics.prior = prior
    with pytest.raises(RuntimeError, match=expected):
        bpy.ops.splat.estimate_materials()
    assert not _mod(addon, "core.job_folder").job_dir_for(obj, "estimate").exists()


def test_a_missing_interpreter_is_reported_and_materials_stay(addon, clean_scene, prefs):
    mats = _mod(addon, "core.materials")
    obj = _points_object("LostPython", _cube())
    bpy.ops.splat.convert_to_particles()
    mats.override_materials(obj, np.ones(125, bool), {"youngs_modulus": 1e4, "poisson_ratio": 0.3, "density": 500.0},
                            youngs_modulus=3e4, lock=False)
    obj.splat_physics.bake_target = "shape_keys"  # no cache folder needed: the file may stay unsaved
    prefs.backend_python = "/nonexistent/dir with space/python"
    with pytest.raises(RuntimeError, match="backend Python interpreter was not found"):
        bpy.ops.splat.simulate_bake()
    assert obj.splat_physics.last_level == "ERROR"
    assert np.all(mats.read_attr(obj, "youngs_modulus") == np.float32(3e4))
    assert obj.data.shape_keys is None


def test_an_unsaved_blend_cannot_hold_a_relative_cache(addon, clean_scene):
    assert not bpy.data.filepath
    s2j = _mod(addon, "core.scene_to_job")
    obj = _points_object("Unsaved", _cube())
    bpy.ops.splat.convert_to_particles()
    obj.splat_physics.bake_target = "gn_cache"
    with pytest.raises(RuntimeError, match=r"Save the \.blend file first"):
        bpy.ops.splat.simulate_bake()
    assert not _mod(addon, "core.job_folder").job_dir_for(obj, "simulate").exists()


def _small_sim(obj, scene):
    scene.frame_start, scene.frame_end = 1, 3
    s = obj.splat_physics
    s.n_grid, s.use_ground, s.youngs_modulus, s.density = 16, True, 2e4, 500.0
    s.bake_target = "shape_keys"


def test_cuda_without_a_gpu_offers_the_cpu(addon, clean_scene, prefs):
    obj = _points_object("WantsGPU", _cube())
    bpy.ops.splat.convert_to_particles()
    _small_sim(obj, clean_scene)
    prefs.device = "cuda"
    try:
        bpy.ops.splat.simulate_bake()
    except RuntimeError as exc:
        assert "No CUDA GPU" in str(exc) and "CPU" in str(exc) and "slower" in str(exc)
        assert "Log: " in obj.splat_physics.last_message and os.path.isfile(obj.splat_physics.last_log)
        assert obj.data.shape_keys is None
    else:
        pytest.skip("this machine has a CUDA GPU")


def test_a_killed_backend_is_reported_and_the_scene_is_untouched(addon, clean_scene):
    jobs = _mod(addon, "backend.client.registry")
    workflow = _mod(addon, "core.workflow")
    mats = _mod(addon, "core.materials")
    obj = _points_object("Killed", _cube())
    bpy.ops.splat.convert_to_particles()
    _small_sim(obj, clean_scene)
    mats.override_materials(obj, np.ones(125, bool), {"youngs_modulus": 1e4, "poisson_ratio": 0.3, "density": 500.0},
                            youngs_modulus=2e4, lock=False)
    before = _snapshot()
    active = workflow.start_simulate(bpy.context, obj)
    deadline = time.monotonic() + 60
    while not any(e.kind == "start" for e in active.runner.events) and time.monotonic() < deadline:
        jobs.tick_all()
        time.sleep(0.02)
    with pytest.raises(RuntimeError, match="already going on 'Killed'"):
        bpy.ops.splat.simulate_bake()  # one run of a kind at a time
    os.killpg(active.runner._proc.pid, signal.SIGKILL)  # as the OS out-of-memory killer would
    result = jobs.wait(workflow.SIMULATE, timeout=60)
    assert not result.ok and result.exit_code == -signal.SIGKILL
    assert "was killed (SIGKILL)" in obj.splat_physics.last_message
    assert obj.splat_physics.last_level == "ERROR" and "Log: " in obj.splat_physics.last_message
    assert _snapshot() == before and obj.data.shape_keys is None
    assert np.all(mats.read_attr(obj, "youngs_modulus") == np.float32(2e4))


def test_a_missing_video_model_is_named_with_what_to_do(addon, clean_scene, prefs, tmp_path):
    mats = _mod(addon, "core.materials")
    obj = _points_object("NeedsSVD", _cube())
    bpy.ops.splat.convert_to_particles()
    cam = bpy.data.objects.new("Cam", bpy.data.cameras.new("Cam"))
    clean_scene.collection.objects.link(cam)
    cam.location, cam.rotation_euler = (0.0, -1.0, 0.1), (1.5708, 0.0, 0.0)
    clean_scene.camera = cam
    bpy.context.view_layer.objects.active = obj
    obj.splat_physics.prior = "svd"
    prefs.svd_model = str(tmp_path / "no such model")
    with pytest.raises(RuntimeError, match="Something the backend needs is missing.*point the add-on preferences"):
        bpy.ops.splat.estimate_materials()
    assert "no such model" in obj.splat_physics.last_message
    assert mats.read_attr(obj, "youngs_modulus") is None


def test_a_diverged_simulation_says_what_to_change_and_keeps_the_bake(addon, clean_scene):
    s2j = _mod(addon, "core.scene_to_job")
    bake = _mod(addon, "core.bake")
    obj = _points_object("Exploding", _cube())
    bpy.ops.splat.convert_to_particles()
    _small_sim(obj, clean_scene)
    assert bpy.ops.splat.simulate_bake() == {"FINISHED"}  # a first bake (shape keys: the file may stay unsaved)
    record = bake.bake_record(obj)
    keys = [k.name for k in obj.data.shape_keys.key_blocks]

    # Blow up the solver state the next run resumes from (deformation gradients of 1e30), then extend the range.
    ckpt = _mod(addon, "core.job_folder").job_dir_for(obj, "simulate") / "out" / protocol.SIM_CHECKPOINT_FILE
    state = protocol.load_npz(ckpt)
    state["F"][:] = 1e30
    protocol.atomic_save_npz(ckpt, **state)
    clean_scene.frame_end = 5
    with pytest.raises(RuntimeError, match="became unstable.*Set Substep to 0"):
        bpy.ops.splat.simulate_bake()
    s = obj.splat_physics
    assert s.last_level == "ERROR" and "Log: " in s.last_message
    assert bake.bake_record(obj) == record and [k.name for k in obj.data.shape_keys.key_blocks] == keys


def test_explain_failure_covers_every_exit_code(addon):
    """The wording for each backend outcome, from real RunResults built as the runner builds them."""
    runner = _mod(addon, "backend.client.runner")
    workflow = _mod(addon, "core.workflow")

    def result(code, message="", state=runner.RunState.FAILED):
        events = [protocol.Event("error", message=message)] if message else []
        return runner.RunResult(state, code, "stopped", None, events)

    E = protocol.ExitCode
    assert "became unstable" in workflow.explain_failure(result(E.DIVERGED, "NaN at frame 3"))
    assert "model" in workflow.explain_failure(result(E.MISSING_RESOURCE, "SVD weights not found at /m"), "cpu")
    assert "No CUDA GPU" in workflow.explain_failure(result(E.MISSING_RESOURCE, "no GPU"), "cuda")
    assert "rejected" in workflow.explain_failure(result(E.BAD_INPUT, "bad fps"))
    assert "cancelled" in workflow.explain_failure(result(E.CANCELLED, state=runner.RunState.CANCELLED))
    assert "internal error: boom" in workflow.explain_failure(result(E.INTERNAL, "boom"))
    logged = runner.RunResult(runner.RunState.FAILED, E.INTERNAL, "stopped", "/x/run.log",
                              [protocol.Event("error", message="Internal error (KeyError: 'a'). The log has the details.")])
    assert workflow.explain_failure(logged) == "Internal error (KeyError: 'a'). The log has the details. Log: /x/run.log"
