"""The batch command's parts that need no cluster: finding jobs, manifests, resources, the plan, install extras."""

import json
import os
import socket
import subprocess
import sys

import pytest

from backend import protocol
from backend.app import batch
from backend.protocol import BadJob, ExitCode
from support import estimate_scenes as es
from support.jobs import REPO, simulate_job


def _cli(*args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "backend", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    events = [protocol.Event.from_json(line) for line in proc.stdout.splitlines() if line.strip()]
    return proc.returncode, events, proc.stderr


def test_jobs_come_from_folders_globs_and_manifests(tmp_path):
    a, b = simulate_job(tmp_path / "jobs" / "a"), simulate_job(tmp_path / "jobs" / "b")
    (tmp_path / "jobs" / "notes").mkdir()  # a folder without job.json is not matched by the glob
    assert batch.collect_folders([str(a)]) == [(a.resolve(), "")]
    assert batch.collect_folders([str(tmp_path / "jobs" / "*")]) == [(a.resolve(), ""), (b.resolve(), "")]
    manifest = protocol.write_manifest(tmp_path / "m" / "farm.json", [(b, "Bee"), (a, "")])
    assert json.loads(manifest.read_text())["jobs"][0]["folder"] == "../jobs/b"  # relative: the tree can move
    assert batch.collect_folders([str(manifest)]) == [(b.resolve(), "Bee"), (a.resolve(), "")]
    assert batch.job_names(batch.collect_folders([str(a), str(b)])) == ["a", "b"]


@pytest.mark.parametrize("make, fragment", [
    (lambda d: [str(d / "missing")], "not found"),
    (lambda d: [str(d / "nothing*")], "no job folders match"),
    (lambda d: [str(d)], "has no job.json"),
    (lambda d: [str(simulate_job(d / "x")), str(d / "x")], "listed twice"),
    (lambda d: [str(_write(d / "m.json", {"kind": "other"}))], "is not a batch manifest"),
    (lambda d: [str(_write(d / "m.json", "{oops"))], "not readable JSON"),
    (lambda d: [str(_write(d / "m.json", {"kind": protocol.MANIFEST_KIND, "schema_version": 1, "jobs": [{}]}))],
     "jobs[0] needs a 'folder'"),
])
def test_bad_sources_are_named(tmp_path, make, fragment):
    with pytest.raises(BadJob, match=fragment.replace("[", r"\[")):
        batch.collect_folders(make(tmp_path))


def _write(path, content):
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _job(tmp_path, command, device="auto", **est):
    scene = es.block_scene(5e3, n_side=4)
    sim, estimate = es.settings(frames=4, groups=2, reference_video=str(tmp_path), **est)
    folder = protocol.write_job(tmp_path / f"{command}_{device}", protocol.default_job(
        command, simulation=sim, estimate=estimate, device=device), scene)
    return protocol.read_job(folder), len(scene["positions"])


def test_resources_ask_a_gpu_for_cuda_and_for_estimation_where_there_is_one(tmp_path):
    sim, n = _job(tmp_path, "simulate")
    est, _ = _job(tmp_path, "estimate")
    est_cuda, _ = _job(tmp_path, "estimate", device="cuda")
    sim_cuda, _ = _job(tmp_path, "simulate", device="cuda")
    est_cpu, _ = _job(tmp_path, "estimate", device="cpu")
    gpus = {name: batch.job_resources(job, n, 1.0, has_gpu)["num_gpus"] for name, job, has_gpu in (
        ("bake", sim, True), ("estimate auto, GPU cluster", est, True), ("estimate auto, CPU cluster", est, False),
        ("estimate cuda", est_cuda, False), ("bake cuda", sim_cuda, False), ("estimate cpu", est_cpu, True))}
    assert gpus == {"bake": 0, "estimate auto, GPU cluster": 1, "estimate auto, CPU cluster": 0,
                    "estimate cuda": 1, "bake cuda": 1, "estimate cpu": 0}
    # The memory hint grows with the work, and a video model adds its weights; --memory-per-job wins.
    assert batch.memory_estimate(sim, 10 * n) > batch.memory_estimate(sim, n)
    assert batch.memory_estimate(est, n) > batch.memory_estimate(sim, n)
    svd, _ = _job(tmp_path / "svd", "estimate", prior="svd", model="some/model")
    assert batch.memory_estimate(svd, n) - batch.memory_estimate(est, n) == batch.PRIOR_WEIGHTS["svd"]
    assert batch.job_resources(sim, n, 2.0, False, memory_override=123)["memory"] == 123
    sim.simulation["threads"] = 3  # a bake that asks for 3 threads reserves 3 cores
    assert batch.job_resources(sim, n, 1.0, False)["num_cpus"] == 3.0


def test_the_simulation_uses_no_more_threads_than_its_reservation(monkeypatch):
    from backend.mpm import threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what batch sets for a 1-CPU job (and Ray for its tasks)
    assert threads.usable_cores() == 1 and threads.thread_count(None, 10**6, "cpu") == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads.usable_cores() == len(os.sched_getaffinity(0))


def test_a_job_no_node_can_hold_is_refused_with_the_reason(tmp_path):
    job = batch.BatchJob("big", tmp_path, device="cuda", resources={"num_cpus": 1.0, "num_gpus": 1, "memory": 4e9})
    cpu_node = {"CPU": 8.0, "memory": 16e9}
    assert "no Ray node has one" in batch.infeasible(job, [cpu_node])
    assert batch.infeasible(job, [cpu_node, {"CPU": 4.0, "GPU": 1.0, "memory": 8e9}]) == ""
    job.resources["memory"] = 64 * 2**30
    assert "64.0 GiB" in batch.infeasible(job, [{"CPU": 4.0, "GPU": 1.0, "memory": 8e9}])


def test_dry_run_checks_every_job_without_ray(tmp_path):
    good = simulate_job(tmp_path / "good")
    bad = simulate_job(tmp_path / "bad")
    (bad / protocol.JOB_FILE).write_text(json.dumps(dict(json.loads((bad / protocol.JOB_FILE).read_text()),
                                                         command="explode")))
    code, events, err = _cli("batch", str(good), str(bad), "--dry-run")
    assert code == ExitCode.BAD_INPUT, err
    plan = {p["job"]: p for p in events[-1].data["jobs"]}
    assert plan["good"]["error"] == "" and plan["good"]["resources"]["num_cpus"] == 1.0
    assert "must be one of simulate" in plan["bad"]["error"]
    assert not (good / protocol.OUT_DIR).exists()  # nothing ran


def test_batch_input_errors_exit_2_with_one_message(tmp_path):
    code, events, err = _cli("batch", str(tmp_path / "nope"))
    assert code == ExitCode.BAD_INPUT and events[-1].kind == "error" and "not found" in events[-1].message
    job = simulate_job(tmp_path / "j")
    code, events, _ = _cli("batch", str(job), "--memory-per-job", "0")
    assert code == ExitCode.BAD_INPUT and "--memory-per-job" in events[-1].message
    # A cluster address nothing answers at is a missing resource, said at once (Ray would retry for minutes).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free_port = s.getsockname()[1]
    code, events, _ = _cli("batch", str(job), "--address", f"127.0.0.1:{free_port}", timeout=60)
    assert code == ExitCode.MISSING_RESOURCE and "cannot reach the Ray cluster" in events[-1].message
    assert not (job / protocol.OUT_DIR).exists()


def test_the_final_table_and_exit_code():
    rows = [{"job": "a", "status": "ok", "exit_code": 0, "seconds": 3.0, "attempts": 1, "message": "finished",
             "figures": {"frames_written": 24}},
            {"job": "b", "status": "diverged", "exit_code": 4, "seconds": 1.5, "attempts": 1,
             "message": "the simulation diverged", "figures": {}},
            {"job": "c", "status": "lost", "exit_code": None, "seconds": 9.0, "attempts": 4, "message": "gave up",
             "figures": {}}]
    text = batch.format_table(rows)
    assert "frames_written=24" in text and "diverged" in text and text.count("\n") == 3
    assert batch.batch_exit_code(rows, cancelled=False) == ExitCode.DIVERGED
    assert batch.batch_exit_code(rows[2:], cancelled=False) == ExitCode.INTERNAL
    assert batch.batch_exit_code(rows, cancelled=True) == ExitCode.CANCELLED
    assert batch.batch_exit_code(rows[:1], cancelled=False) == ExitCode.OK
    assert [batch.status_of(c) for c in (0, 2, 3, 5, None)] == ["ok", "bad_input", "cancelled", "missing_resource",
                                                                "lost"]


def test_install_takes_the_ray_extra_and_names_a_missing_file(tmp_path):
    reqs = REPO / "requirements"
    assert "ray==" in (reqs / "ray.txt").read_text() and "-r ray.txt" in (reqs / "dev.txt").read_text()
    code, events, _ = _cli("install", str(tmp_path / "env"), "--requirements", str(reqs / "backend.txt"),
                           "--requirements", str(tmp_path / "extra.txt"))
    assert code == ExitCode.BAD_INPUT and "extra.txt" in events[-1].message
    assert not (tmp_path / "env").exists()  # nothing created before the inputs were checked
