"""The job runner's own code path against a real backend subprocess (a small MPM simulation)."""

import json
import os
import signal
import sys
import time

import numpy as np
import pytest

from backend import protocol
from backend.client import registry
from backend.client import runner as runner_mod
from backend.protocol import ExitCode
from support.jobs import simulate_job

RunState = runner_mod.RunState


def _runner(job_dir, **kw):
    return runner_mod.JobRunner(sys.executable, ["run", str(job_dir)], log_path=job_dir / "runner.log",
                                cancel_file=job_dir / protocol.CANCEL_FILE, **kw)


def _wait_for(runner, predicate, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runner.tick()
        if predicate(runner):
            return True
        if runner.finished:
            return False
        time.sleep(0.02)
    raise AssertionError("timed out waiting for the backend")


def _no_partial_files(out_dir):
    leftovers = [p for p in out_dir.rglob("*") if protocol.TEMP_MARKER in p.name]
    assert not leftovers, leftovers
    for f in protocol.iter_frame_files(out_dir):  # every frame file present is complete
        protocol.check_arrays(protocol.load_npz(f), protocol.FRAME_ARRAYS, f.name)


def test_events_arrive_in_order_and_the_result_is_clean(tmp_path):
    job = simulate_job(tmp_path / "job with spaces ünïcødé", n_frames=5)
    result = _runner(job).start().wait(timeout=600)
    assert result.ok, result.message
    kinds = [e.kind for e in result.events]
    assert kinds[0] == "start" and kinds[-1] == "result"
    steps = [e.step for e in result.events if e.kind == "progress" and e.stage == "simulate"]
    assert steps == sorted(steps) and steps[-1] == 4
    out = job / protocol.OUT_DIR
    frames = list(protocol.iter_frame_files(out))
    assert [f.name for f in frames] == [protocol.frame_file_name(1 + k) for k in range(5)]
    assert runner_mod.read_result(out)["n_frames"] == 5
    _no_partial_files(out)


def test_cancel_stops_with_the_cancelled_code_and_no_partial_files(tmp_path):
    job = simulate_job(tmp_path / "job", n_frames=400, n_side=10)
    runner = _runner(job, kill_timeout=60).start()
    assert _wait_for(runner, lambda r: r.last_progress is not None)
    runner.cancel()
    result = runner.wait(timeout=120)
    assert result.state is RunState.CANCELLED, result.message
    assert result.exit_code == ExitCode.CANCELLED  # stopped at a safe point, not killed
    out = job / protocol.OUT_DIR
    assert runner_mod.read_result(out) is None
    _no_partial_files(out)


def test_killed_backend_is_an_error_and_the_runner_stays_usable(tmp_path):
    job = simulate_job(tmp_path / "job", n_frames=400, n_side=10)
    runner = _runner(job).start()
    assert _wait_for(runner, lambda r: r.last_progress is not None)
    os.kill(runner._proc.pid, signal.SIGKILL)
    result = runner.wait(timeout=60)
    assert result.state is RunState.FAILED
    assert "killed (SIGKILL)" in result.message and str(job / "runner.log") in result.message
    # The same job, extended, runs again with a fresh runner (resuming from its checkpoint).
    settings = json.loads((job / protocol.JOB_FILE).read_text())
    settings["simulation"]["n_frames"] = 6
    protocol.write_job(job, settings)
    again = _runner(job).start().wait(timeout=600)
    assert again.ok, again.message
    assert any(e.kind == "warning" and "Resuming" in e.message for e in again.events)
    _no_partial_files(job / protocol.OUT_DIR)


def test_missing_interpreter_is_reported_not_raised(tmp_path):
    r = runner_mod.JobRunner(str(tmp_path / "no python here"), ["doctor"]).start()
    assert r.finished and r.result.state is RunState.FAILED
    assert "does not exist. Click Install Backend" in r.result.message


def test_jobs_registry_runs_the_completion_callback_once(tmp_path):
    job = simulate_job(tmp_path / "job", n_frames=3)
    seen = []
    registry.start("simulate-test", _runner(job), on_done=seen.append)
    with pytest.raises(RuntimeError):
        registry.start("simulate-test", _runner(job))
    result = registry.wait("simulate-test", timeout=600)
    registry.tick_all()
    assert result.ok and len(seen) == 1 and seen[0] is result
