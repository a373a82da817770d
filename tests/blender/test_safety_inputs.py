"""Adversarial input on the Blender side, each refused or handled in the artist's words with the scene and
the files around left as they were: object names that are not folder names, a wrong backend interpreter,
read-only folders, splat PLY files with odd SH names or absurd values."""

import contextlib
import importlib
import os
import re
import subprocess
import sys
import tempfile

import bpy
import numpy as np
import pytest

from backend import protocol
from support.artist_files import plant_artist_files, tree_digest


@pytest.fixture(autouse=True)
def _unsaved_jobs_in_tmp(tmp_path, monkeypatch):
    """Job folders of an unsaved .blend go to the temp dir: keep this test's inside its tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def _mod(addon, name):
    return importlib.import_module(f"{addon.__name__}.{name}")


def _cube_object(name, n_side=4):
    g = (np.arange(n_side) + 0.5) / n_side * 0.1
    x, y, z = np.meshgrid(g, g, g + 0.05, indexing="ij")
    pts = np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(pts))
    mesh.vertices.foreach_set("co", pts.astype(np.float32).ravel())
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    for other in bpy.context.selected_objects:
        other.select_set(False)
    bpy.context.view_layer.objects.active = obj
    obj.select_set(True)
    return obj



@pytest.fixture
def prefs(addon):
    p = bpy.context.preferences.addons[addon.__name__].preferences
    saved = p.backend_python, p.doctor_report
    yield p
    p.backend_python, p.doctor_report = saved


@contextlib.contextmanager
def read_only(folder):
    """Make ``folder`` read-only for this process: permissions for a normal user; for root (whom
    permissions do not stop) a read-only bind mount over it, as a read-only disk would be."""
    folder = str(folder)
    if os.geteuid() != 0:
        os.chmod(folder, 0o555)
        try:
            yield
        finally:
            os.chmod(folder, 0o755)
        return
    steps = (["mount", "--bind", folder, folder], ["mount", "-o", "remount,ro,bind", folder])
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        subprocess.run(["umount", folder], capture_output=True, timeout=30)
        pytest.skip(f"cannot make a read-only folder as root here: {exc}")
    try:
        yield
    finally:
        subprocess.run(["umount", folder], check=True, capture_output=True, timeout=30)


# ------------------------------------------------------------------------------------------ object names
NASTY_NAMES = ["..", ".", "/", "a/../../b", "../../escape", "CON", "con.txt", "nul", "LPT1", "Tulpe 🌷", "🌷",
               "🌻", "Ärger ünd Öl", "back\\slash", " spaced ", ".hidden", "x" * 63 + "🌷"]


def test_object_names_become_safe_distinct_folder_names(addon):
    paths = _mod(addon, "core.paths")
    made = [paths.safe_folder_name(n) for n in NASTY_NAMES]
    for name, folder in zip(NASTY_NAMES, made):
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", folder), (name, folder)
        assert folder.split(".")[0].upper() not in {"CON", "NUL", "LPT1", "PRN", "AUX"}, (name, folder)
        assert len(folder) <= paths.MAX_NAME and paths.safe_folder_name(folder) == folder, (name, folder)
    assert len(set(made)) == len(made)  # '🌷' and '🌻' (and 'a/b' vs 'a_b') do not share a folder
    assert paths.safe_folder_name("a/b") != paths.safe_folder_name("a_b")
    for keep in ("Jelly", "Plant.001", "S_gn_cache", "rock-2"):
        assert paths.safe_folder_name(keep) == keep


def test_write_job_for_nasty_names_stays_inside_splat_jobs(addon, project):
    s2j = _mod(addon, "core.scene_to_job")
    outside = project.parent / "outside"
    plant_artist_files(outside)
    around = tree_digest(project.parent, skip=("project",))
    jobs_root = (project / "splat_jobs").resolve()
    for name in ("..", "a/../../b", "CON", "Tulpe 🌷"):
        obj = _cube_object(name)
        assert bpy.ops.splat.write_job(command="simulate") == {"FINISHED"}
        job_dir = _mod(addon, "core.job_folder").job_dir_for(obj, "simulate")
        assert job_dir.resolve().parent.parent == jobs_root, (name, job_dir)
        assert protocol.read_job(job_dir).label == obj.name
    assert tree_digest(project.parent, skip=("project",)) == around
    assert sorted(p.name for p in project.iterdir()) == ["scene.blend", "splat_jobs"]


# ------------------------------------------------------------------------------------------ backend interpreter
def _no_job_written(job_folder, obj):
    return not job_folder.job_dir_for(obj, "simulate").exists()


@pytest.mark.parametrize("python, words", [
    ("/bin/false", r"'/bin/false' is not a working Python interpreter \(it exited with code 1 and said nothing\)"),
    ("{tmp}/no such dir/python3", r"interpreter was not found: '.*no such dir/python3' does not exist.*Install Backend"),
    ("{tmp}", r"is a folder, not a Python interpreter.*Install Backend"),
    ("{tmp}/notes.txt", r"is not executable"),
])
def test_a_wrong_backend_interpreter_is_named_before_any_job_is_written(addon, clean_scene, prefs, tmp_path,
                                                                       python, words):
    s2j = _mod(addon, "core.scene_to_job")
    (tmp_path / "notes.txt").write_text("not a program")
    obj = _cube_object("WrongPython")
    bpy.ops.splat.convert_to_particles()
    obj.splat_physics.bake_target = "shape_keys"
    prefs.backend_python = python.format(tmp=tmp_path)
    with pytest.raises(RuntimeError, match=words):
        bpy.ops.splat.simulate_bake()
    assert obj.splat_physics.last_level == "ERROR" and "internal error" not in obj.splat_physics.last_message.lower()
    assert _no_job_written(_mod(addon, "core.job_folder"), obj) and obj.data.shape_keys is None
    with pytest.raises(RuntimeError, match=words):  # Check Backend says the same, in the preferences too
        bpy.ops.splat.check_backend()
    assert re.search(words, prefs.doctor_report)


def test_a_python_without_the_backend_packages_says_which_are_missing(addon, clean_scene, prefs, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    env = tmp_path / "bare env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    bare = env / "bin" / "python"
    obj = _cube_object("BarePython")
    bpy.ops.splat.convert_to_particles()
    obj.splat_physics.bake_target = "shape_keys"
    prefs.backend_python = str(bare)
    with pytest.raises(RuntimeError, match=re.escape(f"The backend Python at '{bare}' has no numpy, torch, warp-lang. "
                                                     "Click Install Backend")):
        bpy.ops.splat.simulate_bake()
    assert _no_job_written(_mod(addon, "core.job_folder"), obj)
    with pytest.raises(RuntimeError, match=r"has no numpy\. Click Install Backend"):
        bpy.ops.splat.check_backend()


def test_a_package_missing_in_a_run_is_named_not_internal_error(addon):
    runner = _mod(addon, "backend.client.runner")
    workflow = _mod(addon, "core.workflow")
    events = [protocol.Event("error", message="Internal error (ModuleNotFoundError: No module named 'gsplat.cuda'). "
                                              "The log has the details.")]
    result = runner.RunResult(runner.RunState.FAILED, protocol.ExitCode.INTERNAL, "stopped", "/j/run.log", events)
    text = workflow.explain_failure(result, what="estimate")
    assert text.startswith("The backend Python lacks the package 'gsplat' this estimate needs. Click Install Backend")
    assert text.endswith("Log: /j/run.log")


# ------------------------------------------------------------------------------------------ read-only folders
def test_a_read_only_bake_folder_is_refused_before_the_run(addon, project, prefs, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    bake = _mod(addon, "core.bake")
    locked = tmp_path / "locked"
    plant_artist_files(locked)
    obj = _cube_object("ReadOnlyBake")
    bpy.ops.splat.convert_to_particles()
    obj.splat_physics.bake_dir = str(locked / "cache")
    before = tree_digest(tmp_path, skip=("project",))
    with read_only(locked):
        with pytest.raises(RuntimeError, match=re.escape(f"The bake folder {locked / 'cache'} is read-only")):
            bpy.ops.splat.simulate_bake()
        with pytest.raises(bake.BakeError, match="is read-only"):
            bake.bake(obj, [(1, {"positions": np.zeros((64, 3))})], "pc2", str(locked / "cache"))
    assert tree_digest(tmp_path, skip=("project",)) == before and _no_job_written(_mod(addon, "core.job_folder"), obj)


def test_free_bake_in_a_read_only_folder_says_so_and_keeps_the_bake(addon, project, tmp_path):
    bake = _mod(addon, "core.bake")
    obj = _cube_object("FreeLocked")
    n = len(obj.data.vertices)
    frames = [(f, {"positions": np.full((n, 3), 0.01 * f, np.float32)}) for f in (1, 2)]
    cache = tmp_path / "locked_cache"
    bake.bake(obj, frames, "pc2", str(cache))
    record, mods = bake.bake_record(obj), [m.name for m in obj.modifiers]
    before = tree_digest(cache)
    with read_only(cache):
        with pytest.raises(RuntimeError, match=re.escape(f"Cannot free the bake: The bake folder {cache} is read-only")):
            bpy.ops.splat.free_bake()
    assert tree_digest(cache) == before and bake.bake_record(obj) == record and [m.name for m in obj.modifiers] == mods
    assert obj.splat_physics.last_level == "ERROR"
    assert bpy.ops.splat.free_bake() == {"FINISHED"} and not cache.exists()


def test_a_read_only_project_folder_is_said_before_a_job_is_written(addon, project):
    obj = _cube_object("ReadOnlyJob")
    bpy.ops.splat.convert_to_particles()
    before = tree_digest(project)
    with read_only(project):
        with pytest.raises(RuntimeError, match=r"The job folder .*splat_jobs/ReadOnlyJob/simulate is read-only "
                                               r"\(.*project cannot be written"):
            bpy.ops.splat.write_job(command="simulate")
    assert tree_digest(project) == before
    assert obj.splat_physics.last_level == "ERROR"


# ------------------------------------------------------------------------------------------ PLY import
def _splat_columns(ply, n=10, degree=1, width=None):
    rng = np.random.default_rng(1)
    cols = {}
    for name in ply.splat_property_names(degree, normals=False):
        values = rng.normal(size=n).astype(np.float32) - (4.0 if name.startswith("scale_") else 0.0)
        if width and name.startswith(("f_rest_", "f_dc_")):
            head, _, i = name.rpartition("_")
            name = f"{head}_{int(i):0{width}d}"
        cols[name] = values
    return cols


def _counts():
    return len(bpy.data.objects), len(bpy.data.meshes), len(bpy.data.node_groups)


def test_zero_padded_sh_names_import_as_the_standard_attributes(addon, clean_scene, tmp_path):
    ply = _mod(addon, "backend.io.ply")
    splats = _mod(addon, "core.splat_objects")
    cols = _splat_columns(ply, degree=2, width=2)
    assert "f_rest_00" in cols and "f_dc_00" in cols
    path = tmp_path / "padded.ply"
    ply.write_ply(path, cols)
    assert bpy.ops.import_scene.gaussian_splat(filepath=str(path)) == {"FINISHED"}
    obj = bpy.data.objects["padded"]
    data = splats.splat_arrays(obj, world=False)
    assert data["f_rest"].shape == (10, 24)
    np.testing.assert_array_equal(data["f_rest"][:, 7], cols["f_rest_07"])
    np.testing.assert_array_equal(data["f_dc"][:, 2], cols["f_dc_02"])
    assert not any(a.name.startswith(("f_rest_0", "f_dc_0")) and len(a.name) > 8 for a in obj.data.attributes
                   if a.name[-2:].isdigit() and a.name[-2] == "0")


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.__setitem__("scale_0", np.where(np.arange(10) == 4, 50.0, c["scale_0"])),
     r"point 4: scale_0 = 50 is out of range \(log scale, metres: \[-30, 10\]\)"),
    (lambda c: c["opacity"].__setitem__(2, np.nan), r"point 2: opacity = nan is NaN"),
    (lambda c: c["f_dc_1"].__setitem__(6, np.inf), r"point 6: f_dc_1 = inf is infinite"),
    (lambda c: c["f_dc_0"].__setitem__(5, 3e7), r"point 5: f_dc_0 = 3e\+07 is out of range \(SH DC colour"),
    (lambda c: c.pop("f_rest_4"), r"skip f_rest_4"),
    (lambda c: c.__setitem__("f_rest_04", c["f_rest_4"]), r"'f_rest_4' and 'f_rest_04' both mean f_rest_4"),
    (lambda c: [c.pop(f"f_rest_{i}") for i in range(3, 9)], r"has 3 f_rest_\* properties"),
])
def test_bad_splat_values_and_sh_names_are_refused_with_the_scene_unchanged(addon, clean_scene, tmp_path, edit,
                                                                           words):
    ply = _mod(addon, "backend.io.ply")
    cols = _splat_columns(ply)
    edit(cols)
    path = tmp_path / "bad.ply"
    ply.write_ply(path, cols)
    before = _counts()
    with pytest.raises(RuntimeError, match=r"Cannot import splats: .*bad\.ply: (.*)?" + words) as err:
        bpy.ops.import_scene.gaussian_splat(filepath=str(path))
    assert "Traceback" not in str(err.value)
    assert _counts() == before


def test_unsaved_job_folders_stay_in_the_temp_folder(addon, clean_scene, tmp_path):
    s2j = _mod(addon, "core.scene_to_job")
    obj = _cube_object("..")
    job = _mod(addon, "core.job_folder").job_dir_for(obj, "estimate")
    assert job.resolve().is_relative_to((tmp_path / "splat_jobs").resolve()) and job.parent.name != ".."
