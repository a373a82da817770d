"""`python -m backend batch` on a real local Ray cluster (2 CPUs): results, a killed worker, cancel, bad jobs.

The cluster is started here (as a head node on the loopback address) and the batch joins it with
--address, as it would join a farm. Every job runs the real backend; nothing is mocked.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # a local-only cluster: loopback addresses
ray = pytest.importorskip("ray", reason="Ray is the optional extra in requirements/ray.txt")

from backend import protocol  # noqa: E402
from backend.protocol import Event, ExitCode  # noqa: E402
from support import estimate_scenes as es  # noqa: E402
from support.jobs import REPO, run_cli, simulate_job  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    # The batches join this cluster as their own drivers; this one only runs the worker-side check below.
    ray.init(num_cpus=2, object_store_memory=128 * 2**20, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [str(REPO / "backend")]})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def start_batch(address, *sources, extra=()):
    cmd = [sys.executable, "-u", "-m", "backend", "batch", "--address", address, *map(str, sources), *extra]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def events_of(lines):
    return [Event.from_json(line) for line in lines if line.strip()]


def run_batch(address, *sources, extra=(), timeout=240):
    proc = start_batch(address, *sources, extra=extra)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, events_of(out.splitlines()), err


def report_rows(events):
    final = events[-1]
    assert final.kind == "result" and final.stage == "batch", final
    return {r["job"]: r for r in final.data["jobs"]}, Path(final.data["report"])


def frames(folder):
    return [protocol.load_npz(f) for f in protocol.iter_frame_files(folder / protocol.OUT_DIR)]


def assert_same_frames(a, b):
    fa, fb = frames(a), frames(b)
    assert len(fa) == len(fb) and fa
    for x, y in zip(fa, fb):
        for key in protocol.FRAME_ARRAYS:
            assert np.array_equal(x[key], y[key]), key


def standalone_copy(folder: Path) -> Path:
    """The same job, run alone with `backend run` (one torch thread, as a 1-CPU Ray task gets)."""
    ref = folder.with_name("alone_" + folder.name)
    shutil.copytree(folder, ref)
    env_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        code, _, err = run_cli(ref)
    finally:
        os.environ.pop("OMP_NUM_THREADS") if env_threads is None else os.environ.update(OMP_NUM_THREADS=env_threads)
    assert code == 0, err[-2000:]
    return ref


def test_three_jobs_equal_their_standalone_runs_and_a_bad_job_does_not_stop_them(cluster, tmp_path):
    sim_a = simulate_job(tmp_path / "bend", n_frames=6)
    sim_b = simulate_job(tmp_path / "drop", n_frames=5, n_side=5, gravity=[0.0, 0.0, -3.0])
    scene = es.block_scene(5.0e3, n_side=6)
    sim, est = es.settings(frames=4, groups=2, iterations=2)
    code, _, err = run_cli(protocol.write_job(tmp_path / "truth", protocol.default_job("preview", simulation=sim,
                                                                                       estimate=est), scene))
    assert code == 0, err[-2000:]
    start = dict(scene, youngs_modulus=np.full(len(scene["positions"]), 2.0e4, np.float32))
    estimate = protocol.write_job(tmp_path / "est", protocol.default_job("estimate", simulation=sim, estimate=est),
                                  start)
    bad = simulate_job(tmp_path / "bad", n_frames=3)
    broken = protocol.load_npz(bad / protocol.SCENE_FILE)
    broken["positions"][7] = np.nan
    protocol.atomic_save_npz(bad / protocol.SCENE_FILE, **broken)
    bad_listing = sorted(p.name for p in bad.rglob("*"))
    alone = {f.name: standalone_copy(f) for f in (sim_a, sim_b, estimate)}

    manifest = protocol.write_manifest(tmp_path / "farm.json", [(f, "") for f in (sim_a, bad, sim_b, estimate)])
    code, events, err = run_batch(cluster, manifest)
    assert code == ExitCode.BAD_INPUT, err[-3000:]  # the first failed job's code, after all of them ran
    rows, report = report_rows(events)
    assert report == tmp_path / "farm_report" / "report.json"  # next to the manifest
    assert json.loads(report.read_text())["jobs"] == list(rows.values())
    assert {n: r["status"] for n, r in rows.items()} == {"bend": "ok", "bad": "bad_input", "drop": "ok",
                                                         "est": "ok"}
    assert rows["bad"]["exit_code"] == 2 and "NaN" in rows["bad"]["message"]
    assert sorted(p.name for p in bad.rglob("*")) == bad_listing  # nothing written into the bad job
    assert rows["bend"]["figures"]["frames_written"] == 6 and rows["drop"]["figures"]["frames_written"] == 5
    assert rows["est"]["figures"]["iterations"] == 2 and rows["est"]["figures"]["E_p50"] > 0

    for name in ("bend", "drop"):
        assert_same_frames(tmp_path / name, alone[name])
    got = protocol.load_npz(estimate / protocol.OUT_DIR / protocol.MATERIALS_FILE)
    want = protocol.load_npz(alone["est"] / protocol.OUT_DIR / protocol.MATERIALS_FILE)
    for key in protocol.MATERIAL_ARRAYS:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6)

    # One stream: every job's own events (tagged with the job) and the batch's running totals.
    per_job = {e.data.get("job") for e in events if e.stage != "batch"}
    assert per_job == {"bend", "drop", "est", "bad"}
    totals = [e for e in events if e.kind == "progress" and e.stage == "batch"]
    assert totals[-1].step == totals[-1].total == 4 and totals[-1].data["fraction"] == 1.0
    steps = [e.step for e in events if e.kind == "progress" and e.data.get("job") == "bend"]
    assert steps == sorted(steps) and steps[-1] == 5
    assert (report.parent / "events.jsonl").read_text().count("\n") == len(events) - 1


def _follow(proc, on_event):
    """Read the batch's stream line by line, calling on_event(event) for each."""
    seen = []
    for line in proc.stdout:
        if line.strip():
            seen.append(Event.from_json(line))
            on_event(seen[-1])
    proc.wait(timeout=120)
    return seen


def _wait_for_pending_sigterm(pid, timeout=60):
    """Until SIGTERM is queued on the (stopped) process: then it is sure to see it when continued."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        pending = {k: int(v, 16) for k, v in (ln.split(":") for ln in status.splitlines() if ln[:6] in ("SigPnd",
                                                                                                       "ShdPnd"))}
        if any(mask & (1 << (signal.SIGTERM - 1)) for mask in pending.values()):
            return
        time.sleep(0.05)
    raise AssertionError("the backend never got its SIGTERM")


def test_killed_worker_resumes_from_the_checkpoint_and_a_cancelled_batch_stays_resumable(cluster, tmp_path):
    # Small substeps make each frame take a while, so the backend is still running when the test acts on a
    # relayed progress event (on a quiet machine the default steps finished the job before the relay arrived).
    job = simulate_job(tmp_path / "long", n_frames=24, n_side=8, n_grid=24, substep_dt=2e-5)
    alone = standalone_copy(job)
    # The backend is frozen (SIGSTOP) at each intervention, so the test does not race the simulation.
    state = {}

    def intervene(ev):
        data = ev.data
        if ev.stage == "batch" and "backend_pid" in data:
            state["backend"], state["worker"] = data["backend_pid"], data["worker_pid"]
        if ev.stage == "batch" and ev.message.startswith("cancelling") and "paused" in state:
            _wait_for_pending_sigterm(state["paused"])
            os.kill(state["paused"], signal.SIGCONT)
        if ev.kind != "progress" or ev.stage != "simulate":
            return
        if data["attempt"] == 1 and ev.step >= 4 and "killed_at" not in state:
            # 1. Lose the Ray worker mid-run (its backend dies with it); Ray retries, the backend resumes.
            #    Its lock is made to name another host, as when a whole node is lost.
            os.kill(state["backend"], signal.SIGSTOP)
            lock = job / protocol.LOCK_FILE
            lock.write_text(json.dumps(dict(json.loads(lock.read_text()), host="lost-node")))
            os.kill(state["worker"], signal.SIGKILL)
            state["killed_at"] = ev.step
        elif data["attempt"] == 2 and ev.step >= state["killed_at"] + 3 and "paused" not in state:
            # 2. A few frames into the retry, cancel the batch as a farm manager would (SIGTERM to the driver).
            os.kill(state["backend"], signal.SIGSTOP)
            state["paused"] = state["backend"]
            proc.send_signal(signal.SIGTERM)

    proc = start_batch(cluster, job, extra=("--report", str(tmp_path / "report")))
    events = _follow(proc, intervene)
    assert "killed_at" in state and "paused" in state, proc.stderr.read()[-3000:]
    assert proc.returncode == ExitCode.CANCELLED, proc.stderr.read()[-3000:]
    rows, _ = report_rows(events)
    assert rows["long"]["status"] == "cancelled" and rows["long"]["attempts"] == 2
    second = [e for e in events if e.data.get("job") == "long" and e.data.get("attempt") == 2]
    assert any(e.kind == "warning" and "Resuming from frame" in e.message for e in second)
    assert any(e.kind == "warning" and "lock of its previous attempt" in e.message and "lost-node" in e.message
               for e in second)
    resumed_steps = [e.step for e in second if e.kind == "progress" and e.stage == "simulate"]
    assert resumed_steps[0] > state["killed_at"]  # it did not start over
    assert protocol.RESULT_FILE not in os.listdir(job / protocol.OUT_DIR)
    done_before = len(frames(job))
    assert resumed_steps[-1] < done_before < 24

    # 3. The same batch again finishes from where the cancel left it; the frames equal an uninterrupted run.
    code, events, err = run_batch(cluster, job, extra=("--report", str(tmp_path / "report")))
    assert code == 0, err[-3000:]
    rows, _ = report_rows(events)
    assert rows["long"]["status"] == "ok" and rows["long"]["figures"]["frames_written"] == 24
    steps = [e.step for e in events if e.kind == "progress" and e.data.get("job") == "long"]
    assert steps[0] == done_before
    assert_same_frames(job, alone)


def test_a_worker_that_does_not_see_the_same_folder_refuses_the_job(cluster, tmp_path):
    """On a farm without shared storage a node reads another (or no) job.json: the job is not run there."""
    from backend.app import batch

    job = simulate_job(tmp_path / "elsewhere", n_frames=2)
    hub = ray.remote(batch.Hub).options(num_cpus=0).remote()
    task = ray.remote(batch.run_on_worker).options(max_retries=0)
    driver_digest = batch.job_digest(job)
    (job / protocol.JOB_FILE).write_text((job / protocol.JOB_FILE).read_text() + " ")  # this node's copy differs
    spec = {"name": "elsewhere", "folder": str(job), "digest": driver_digest, "scene_file": protocol.SCENE_FILE,
            "cpus": 1, "submitted_at": 0.0}
    outcome = ray.get(task.remote(spec, hub), timeout=120)
    assert outcome["exit_code"] == ExitCode.MISSING_RESOURCE
    assert "does not see the job folder as the driver does" in outcome["message"]
    assert "storage every worker sees" in outcome["message"]
    assert not (job / protocol.OUT_DIR).exists()
    errors = [Event.from_json(line) for _, _, line in ray.get(hub.drain.remote())]
    assert errors and errors[-1].kind == "error" and errors[-1].data["exit_code"] == ExitCode.MISSING_RESOURCE
