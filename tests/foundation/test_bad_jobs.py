"""Bad jobs: one precise message, the right exit code, no traceback, and nothing heavy imported first."""

import json

import numpy as np
import pytest

from backend import protocol
from backend.protocol import ExitCode

from support.jobs import edit_job, run_cli, simulate_job


def _assert_bad(job_dir, expect_in_message, code=ExitCode.BAD_INPUT):
    rc, events, stderr = run_cli(job_dir)
    assert rc == code, stderr
    errors = [e for e in events if e.kind == "error"]
    assert len(errors) == 1 and expect_in_message in errors[0].message, [e.message for e in errors]
    assert "Traceback" not in stderr
    assert all(e.kind == "error" for e in events), "nothing may start before validation"
    return errors[0].message


def _rewrite_scene(folder, **arrays):
    scene = protocol.load_npz(folder / protocol.SCENE_FILE)
    scene.update(arrays)
    for k in [k for k, v in arrays.items() if v is None]:
        scene.pop(k)
    np.savez(folder / protocol.SCENE_FILE, **scene)


def test_missing_scene_file(tmp_path):
    job = simulate_job(tmp_path / "job")
    (job / protocol.SCENE_FILE).unlink()
    _assert_bad(job, "scene file not found")


def test_missing_job_folder(tmp_path):
    _assert_bad(tmp_path / "nope", "job folder not found")


def test_wrong_schema_version(tmp_path):
    job = simulate_job(tmp_path / "job")
    edit_job(job, schema_version=99)
    msg = _assert_bad(job, "schema_version 99")
    assert f"version {protocol.SCHEMA_VERSION}" in msg


def test_arrays_of_wrong_shape(tmp_path):
    job = simulate_job(tmp_path / "job")
    _rewrite_scene(job, scale=np.zeros((5, 2), np.float32))
    _assert_bad(job, "'scale' has shape (5, 2), expected (N, 3)")


def test_arrays_of_mismatched_length(tmp_path):
    job = simulate_job(tmp_path / "job")
    _rewrite_scene(job, density=np.full(7, 500.0, np.float32))
    _assert_bad(job, "'density' has 7 rows")


def test_nan_positions(tmp_path):
    job = simulate_job(tmp_path / "job")
    pos = protocol.load_npz(job / protocol.SCENE_FILE)["positions"]
    pos[3, 1] = np.nan
    _rewrite_scene(job, positions=pos)
    _assert_bad(job, "'positions' has NaN or infinite values (1 of")


def test_zero_points(tmp_path):
    job = simulate_job(tmp_path / "job")
    np.savez(job / protocol.SCENE_FILE, positions=np.zeros((0, 3), np.float32))
    _assert_bad(job, "the object has no points")


def test_pickled_arrays_are_refused(tmp_path):
    job = simulate_job(tmp_path / "job")
    np.savez(job / protocol.SCENE_FILE, positions=np.array([object()], dtype=object))
    _assert_bad(job, "cannot read")


def test_unknown_setting_is_refused(tmp_path):
    job = simulate_job(tmp_path / "job")
    data = json.loads((job / protocol.JOB_FILE).read_text())
    data["simulation"]["n_gird"] = 32
    (job / protocol.JOB_FILE).write_text(json.dumps(data))
    _assert_bad(job, "simulation has unknown setting(s) n_gird")


def test_bad_value_names_the_setting(tmp_path):
    job = simulate_job(tmp_path / "job", n_grid=4)
    _assert_bad(job, "simulation.n_grid = 4 is outside")


def test_not_json(tmp_path):
    job = simulate_job(tmp_path / "job")
    (job / protocol.JOB_FILE).write_text("{not json")
    _assert_bad(job, "not valid JSON")


def test_estimate_without_prompt_for_text_prior(tmp_path):
    job = simulate_job(tmp_path / "job")
    data = json.loads((job / protocol.JOB_FILE).read_text())
    data["command"] = "estimate"
    data["estimate"].update(prior="modelscope", model="some/model", prompt="  ")
    (job / protocol.JOB_FILE).write_text(json.dumps(data))
    _assert_bad(job, "needs a prompt")


def test_bad_job_in_a_path_with_spaces_and_non_ascii(tmp_path):
    job = simulate_job(tmp_path / "dossier avec espaces — ünïcødé 日本")
    edit_job(job, schema_version=0)
    _assert_bad(job, "schema_version 0")


def test_validation_happens_before_heavy_imports(tmp_path):
    """A bad job must fail fast: the compute stack is not even imported."""
    import subprocess
    import sys

    job = simulate_job(tmp_path / "job")
    edit_job(job, schema_version=99)
    code = ("import sys, runpy; sys.argv=['backend','run',%r]\n"
            "try:\n    runpy.run_module('backend', run_name='__main__')\nexcept SystemExit: pass\n"
            "heavy=[m for m in ('torch','warp','diffusers','gsplat') if m in sys.modules]\n"
            "sys.stderr.write('HEAVY=%%s\\n' %% heavy)") % str(job)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(jobs_repo()))
    assert "HEAVY=[]" in proc.stderr, proc.stderr


def jobs_repo():
    from support.jobs import REPO

    return REPO
