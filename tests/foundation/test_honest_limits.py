"""Honest limits: refuse what cannot be simulated before simulating, show the projected time, and never
exit 0 with a collapsed or exploded object."""

import numpy as np
import pytest

from backend import protocol
from backend.protocol import ExitCode

from support.jobs import run_cli, simulate_job


def _scene_set(folder, **arrays):
    scene = protocol.load_npz(folder / protocol.SCENE_FILE)
    n = len(scene["positions"])
    for k, v in arrays.items():
        v = np.asarray(v)
        v = v if v.dtype == bool else v.astype(np.float32)
        scene[k] = v if v.ndim and len(v) == n else np.broadcast_to(v, (n,) + v.shape).copy()
    np.savez(folder / protocol.SCENE_FILE, **scene)


def _refused(job, *phrases):
    before = sorted(p.name for p in job.iterdir())
    rc, events, stderr = run_cli(job)
    assert rc == ExitCode.BAD_INPUT, stderr
    msg = [e.message for e in events if e.kind == "error"][0]
    for phrase in phrases:
        assert phrase in msg, msg
    assert not any(e.kind == "progress" and e.stage == "simulate" for e in events)  # nothing was simulated
    assert not (job / protocol.OUT_DIR / protocol.FRAMES_DIR).exists() or \
        not any((job / protocol.OUT_DIR / protocol.FRAMES_DIR).iterdir())
    assert sorted(p.name for p in job.iterdir() if p.name != protocol.OUT_DIR) == \
        [n for n in before if n != protocol.OUT_DIR]
    return msg


def test_too_many_substeps_is_refused_before_simulating(tmp_path):
    job = simulate_job(tmp_path / "job")
    _scene_set(job, youngs_modulus=1e12)
    msg = _refused(job, "substeps per frame", "max_substeps_per_frame", "softer", "coarser grid")
    assert "about" in msg  # the projected time


@pytest.mark.parametrize("arrays, phrase", [
    ({"density": 1e-6}, "density below 1"),
    ({"poisson_ratio": -0.95}, "Poisson ratio at or below -0.9"),
    ({"initial_velocity": [1e3, 0.0, 0.0]}, "wave speed"),  # 1e6 m/s: the scene range check refuses it
])
def test_unphysical_inputs_are_refused_with_the_reason(tmp_path, arrays, phrase):
    job = simulate_job(tmp_path / "job")
    _scene_set(job, **arrays)
    _refused(job, phrase)


def test_projected_time_and_rest_state_are_reported(tmp_path):
    job = simulate_job(tmp_path / "job", n_frames=3)
    pos = protocol.load_npz(job / protocol.SCENE_FILE)["positions"]
    _scene_set(job, anchor=pos[:, 2] < pos[:, 2].min() + 0.01)  # held at its base: it has a rest state
    rc, events, stderr = run_cli(job)
    assert rc == 0, stderr
    plan = [i for i, e in enumerate(events) if e.kind == "stage" and e.stage == "plan"]
    first_frame = min(i for i, e in enumerate(events) if e.kind == "progress" and e.stage == "simulate")
    assert plan and plan[0] < first_frame
    assert events[plan[0]].data["projected_seconds"] > 0 and events[plan[0]].data["substeps_per_frame"] >= 1
    result = [e for e in events if e.kind == "result"][0].data
    assert result["rest_state"]["residual"] <= 1e-3 and result["projected_seconds"] > 0


def test_a_falling_object_has_no_rest_state(tmp_path):
    job = simulate_job(tmp_path / "job", n_frames=2)  # 5 cm above the ground, nothing holds it
    rc, events, stderr = run_cli(job)
    assert rc == 0, stderr
    assert any("it falls, so it has no rest state" in e.message for e in events if e.kind == "warning")
    assert [e for e in events if e.kind == "result"][0].data["rest_state"] is None


def test_sanity_check_catches_collapse_and_explosion():
    from types import SimpleNamespace

    from backend.jobs.simulate import SanityCheck

    pos = np.random.default_rng(0).random((100, 3))
    grid = SimpleNamespace(domain_min=np.zeros(3), domain_max=np.full(3, 2.0))
    check = SanityCheck(pos, grid)
    check.check(1, pos * 0.9, np.full((100, 3), 0.01))  # fine
    with pytest.raises(protocol.Diverged, match="collapsed"):
        check.check(2, 0.5 + pos * 1e-3, np.full((100, 3), 0.01))
    with pytest.raises(protocol.Diverged, match="exploded"):
        check.check(3, pos, np.full((100, 3), 1e3))
