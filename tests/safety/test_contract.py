"""The job schema, resume files and failure messages, checked directly (no subprocess needed)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from backend import protocol
from backend.protocol import ExitCode
from support.jobs import REPO, simulate_job
from support.hostile import pickle_bytes, pickled_npz


# ----------------------------------------------------------------------------- one schema
def test_defaults_come_from_the_schema_and_validate():
    job = protocol.default_job("simulate")
    assert set(job) == protocol.TOP_LEVEL_KEYS
    assert job["simulation"] == protocol.SIMULATION_DEFAULTS and job["estimate"] == protocol.ESTIMATE_DEFAULTS
    assert protocol.SIMULATION_DEFAULTS["plasticity"]["friction_angle_deg"] == 30.0


def test_consumers_take_their_defaults_and_enumerations_from_the_schema():
    from backend.field import FIELD_KINDS
    from backend.mpm import Boundary, MaterialModel, Plasticity, SimConfig

    assert [m.name.lower() for m in MaterialModel] == list(protocol.MATERIAL_MODELS)
    assert set(FIELD_KINDS) == set(protocol.FIELDS)
    assert SimConfig().n_grid == protocol.SIMULATION_DEFAULTS["n_grid"]
    assert Boundary().kind == protocol.SIMULATION_DEFAULTS["walls"]["kind"]
    assert Plasticity().yield_stress == protocol.SIMULATION_DEFAULTS["plasticity"]["yield_stress"]


def test_the_kernels_count_materials_and_boundaries_as_the_contract_does():
    from backend.mpm import boundary, constitutive

    for i, name in enumerate(protocol.MATERIAL_MODELS):
        assert getattr(constitutive, name.upper()) == i, name
    for i, name in enumerate(protocol.BOUNDARY_KINDS):
        assert getattr(boundary, name.upper()) == boundary.kind_id(name) == i, name


def test_model_ids_and_material_defaults_have_one_home():
    from backend.field.material import DEFAULT_NU
    from backend.prior.models import DEFAULT_MODELS

    assert DEFAULT_MODELS is protocol.DEFAULT_MODELS and DEFAULT_NU == protocol.DEFAULT_NU


def test_the_stiffness_summary_is_the_percentiles_of_e():
    E = np.logspace(3, 5, 101)  # 1 kPa .. 100 kPa, evenly in log: the median is 10 kPa
    s = protocol.e_percentiles(E)
    assert list(s) == ["E_p5", "E_p50", "E_p95"] and s["E_p50"] == pytest.approx(1e4)
    assert s["E_p5"] == pytest.approx(np.percentile(E, 5)) and s["E_p95"] == pytest.approx(np.percentile(E, 95))


def test_the_rules_that_used_to_disagree(tmp_path):
    """nu_range [-0.2, 0.4] is valid everywhere; n_grid has one cap; a zero-length poke is refused once."""
    (tmp_path / protocol.SCENE_FILE).write_bytes(b"")
    job = protocol.validate_job(protocol.default_job("simulate", estimate={"nu_range": [-0.2, 0.4]}), tmp_path)
    assert job.estimate["nu_range"] == [-0.2, 0.4]
    with pytest.raises(protocol.BadJob, match=r"simulation.n_grid = 1024 is outside \[12, 512\]"):
        protocol.validate_job(protocol.default_job("simulate", simulation={"n_grid": 1024}), tmp_path)
    poke = {"center": [0, 0, 0], "radius": 0.1, "direction": [1, 0, 0], "strength": 1.0, "start": 0.2, "end": 0.2}
    with pytest.raises(protocol.BadJob, match=r"simulation.pokes\[0\].end = 0.2 must be after its start"):
        protocol.validate_job(protocol.default_job("simulate", simulation={"pokes": [poke]}), tmp_path)


def test_validated_settings_build_the_solver_config(tmp_path):
    """What the schema accepts, SimConfig takes as it is (no second set of rules to disagree with)."""
    from backend.jobs.simulate import sim_config

    (tmp_path / protocol.SCENE_FILE).write_bytes(b"")
    sim = {"pokes": [{"center": [0, 0, 0.1], "radius": 0.05, "direction": [0, 1, 0], "strength": 3}],
           "winds": [{"direction": [1, 0, 0], "strength": 1}], "ground": {},
           "colliders": [{"times": [0, 1], "centers": [[0, 0, 0], [0, 0, 1]], "half_extents": [0.1, 0.1, 0.1]}]}
    job = protocol.validate_job(protocol.default_job("simulate", simulation=sim), tmp_path)
    cfg = sim_config(job.simulation)
    assert cfg.pokes[0].end is None and cfg.ground.kind == "frictional" and cfg.colliders[0].kind == "sticky"


HEAVY = ("torch", "warp", "diffusers", "gsplat")


def test_bad_jobs_are_refused_before_any_heavy_import(tmp_path):
    """Each kind of refusal (schema, paths, scene ranges, domain, nesting) happens with the compute stack unloaded."""
    jobs = []
    for i, (section, change) in enumerate([
            ("simulation", {"pokes": [{"center": [0, 0, 0], "radius": 1, "direction": [1, 0, 0], "strength": 1,
                                       "start": 1, "end": 1}]}),
            ("estimate", {"nu_range": [0.3, 0.2]}),
            ("simulation", {"domain_min": [1, 1, 1], "domain_max": [2, 2, 2]}),
            (None, {"output": "../x"}),
            (None, {"command": "preview", "estimate": dict(protocol.ESTIMATE_DEFAULTS, camera={
                "viewmat": np.eye(4).tolist(), "K": [[0, 0, 8], [0, 0, 8], [0, 0, 1]], "width": 16, "height": 16})})]):
        job = simulate_job(tmp_path / f"job{i}")
        data = json.loads((job / protocol.JOB_FILE).read_text())
        (data[section] if section else data).update(change)
        (job / protocol.JOB_FILE).write_text(json.dumps(data))
        jobs.append(job)
    job = simulate_job(tmp_path / "scale")
    scene = protocol.load_npz(job / protocol.SCENE_FILE)
    scene["scale"][0, 0] = 50
    np.savez(job / protocol.SCENE_FILE, **scene)
    jobs.append(job)
    code = ("import sys\nfrom backend.app.cli import main\n"
            "codes = [int(main(['run', p])) for p in sys.argv[1:]]\n"
            "heavy = [m for m in %r if m in sys.modules]\n"
            "sys.stderr.write('CODES=%%s HEAVY=%%s\\n' %% (codes, heavy))") % (HEAVY,)
    proc = subprocess.run([sys.executable, "-c", code, *map(str, jobs)], capture_output=True, text=True, cwd=REPO)
    assert f"CODES={[2] * len(jobs)} HEAVY=[]" in proc.stderr, proc.stderr[-2000:]


# ----------------------------------------------------------------------------- resume files
def test_state_round_trip_keeps_structure_and_types(tmp_path):
    import torch

    from backend.io.statefile import load_state, save_state

    field = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(field.parameters(), lr=0.01)
    field(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"field": field.state_dict(), "optimizer": opt.state_dict(), "history": [{"loss": 0.5, "ok": True}]}
    save_state(tmp_path / "s.npz", "abc", state)
    back = load_state(tmp_path / "s.npz", "abc", as_tensor=torch.from_numpy)
    field2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(field2.parameters(), lr=0.5)
    field2.load_state_dict(back["field"])
    opt2.load_state_dict(back["optimizer"])
    assert torch.equal(field2.weight, field.weight) and back["history"] == state["history"]
    assert opt2.param_groups[0]["lr"] == 0.01 and set(opt2.state_dict()["state"]) == {0, 1}


def _field_and_optimizer():
    import torch

    field = torch.nn.Linear(3, 2)
    return field, torch.optim.Adam(field.parameters(), lr=0.01)


@pytest.mark.parametrize("kind, reason", [
    ("object_array", "unreadable"),
    ("raw_pickle", "unreadable"),
    ("foreign", "other settings"),
    ("nan_matching_fingerprint", "NaN or infinite"),
    ("other_layout", "layout"),
])
def test_a_bad_estimate_checkpoint_is_never_used(tmp_path, kind, reason):
    """Crafted, foreign or poisoned checkpoints: nothing runs, nothing is loaded, the run starts over and says why."""
    import torch

    from backend.jobs.estimate import load_checkpoint, save_checkpoint
    from backend.jobctl import Reporter

    sentinel, path = tmp_path / "PWNED", tmp_path / protocol.ESTIMATE_CHECKPOINT_FILE
    field, opt = _field_and_optimizer()
    if kind == "object_array":
        pickled_npz(path, sentinel)
    elif kind == "raw_pickle":
        path.write_bytes(pickle_bytes(sentinel))
    else:
        other, other_opt = (torch.nn.Linear(3, 5), None) if kind == "other_layout" else _field_and_optimizer()
        other_opt = other_opt or torch.optim.Adam(other.parameters())
        if kind == "nan_matching_fingerprint":
            with torch.no_grad():
                other.weight[0, 0] = float("nan")
        save_checkpoint(path, "other" if kind == "foreign" else "mine", other, other_opt, [{"loss": 1.0}])
    before = {k: v.clone() for k, v in field.state_dict().items()}
    stream = io.StringIO()
    assert load_checkpoint(path, "mine", field, opt, Reporter(stream)) is None and not sentinel.exists()
    assert all(torch.equal(before[k], v) for k, v in field.state_dict().items())
    events = [protocol.Event.from_json(line) for line in stream.getvalue().splitlines()]
    assert any(e.kind == "warning" and reason in e.message and "Starting over" in e.message for e in events), events


def test_a_good_estimate_checkpoint_resumes(tmp_path):
    from backend.jobs.estimate import load_checkpoint, save_checkpoint
    from backend.jobctl import Reporter

    path = tmp_path / protocol.ESTIMATE_CHECKPOINT_FILE
    field, opt = _field_and_optimizer()
    save_checkpoint(path, "mine", field, opt, [{"loss": 1.0}, {"loss": 0.5}])
    field2, opt2 = _field_and_optimizer()
    history, _, _ = load_checkpoint(path, "mine", field2, opt2, Reporter(io.StringIO()))
    assert len(history) == 2 and history[1]["loss"] == 0.5
    assert all((a == b).all() for a, b in zip(field.state_dict().values(), field2.state_dict().values()))


# ----------------------------------------------------------------------------- failures in the user's words
@pytest.mark.parametrize("exc, code, fragment", [
    (MemoryError(), ExitCode.MISSING_RESOURCE, "Out of memory while simulate (simulating 48 frames)"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), ExitCode.MISSING_RESOURCE, "Out of memory"),
    (RuntimeError("Failed to allocate 4294967296 bytes on device 'cpu'"), ExitCode.MISSING_RESOURCE, "Out of memory"),
    (OSError(28, "No space left on device", "/job/out/frames/frame_000007.npz"), ExitCode.MISSING_RESOURCE,
     "The disk is full (while simulate (simulating 48 frames) /job/out/frames/frame_000007.npz)"),
    (PermissionError(13, "Permission denied", "/job/backend.lock"), ExitCode.BAD_INPUT,
     "No permission for /job/backend.lock"),
    (OSError(30, "Read-only file system", "/job/out"), ExitCode.BAD_INPUT, "No permission for /job/out"),
    (RecursionError(), ExitCode.BAD_INPUT, "nested too deeply"),
    (KeyError("a"), ExitCode.INTERNAL, "Internal error while simulate (simulating 48 frames) (KeyError: 'a')"),
])
def test_failures_are_explained_with_the_stage(exc, code, fragment):
    from backend.app.cli import explain
    from backend.jobctl import Reporter

    reporter = Reporter(io.StringIO())
    reporter.stage("simulate", "Simulating 48 frames")
    error = explain(exc, reporter.current)
    assert error.exit_code == code and fragment in error.message, error.message


def test_torch_out_of_memory_is_a_missing_resource():
    import torch

    from backend.app.cli import explain

    assert explain(torch.OutOfMemoryError("CUDA error"), "estimate").exit_code == ExitCode.MISSING_RESOURCE


def test_interrupts_are_not_swallowed():
    from backend.app.cli import explain

    assert explain(KeyboardInterrupt(), "x") is None and explain(SystemExit(1), "x") is None
