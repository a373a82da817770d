"""The adversarial corpus: bad jobs, hostile files and faults, each run through the real CLI
(`python -m backend run <job>` in a subprocess, as the add-on and a farm run it).

Every case asserts the exit code, the message, and that nothing around the job changed: every file under
the test's root (the user's decoy files next to and inside the job folder included) is hashed before and
after. Most cases are refused before anything heavy loads; four run a real tiny simulation or estimation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backend import protocol
from backend.protocol import ExitCode
from support.hostile import pickle_bytes, pickled_npz
from support.jobs import REPO, run_cli, simulate_job

DECOYS = {"holiday.jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "client/brief.txt": b"the client's brief\n"}


# ----------------------------------------------------------------------------- helpers
def snapshot(root: Path, skip: Path | None = None) -> dict:
    """Every file, folder and link under root (optionally leaving out one folder the run may write)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            if skip is not None and (p == skip or skip in p.parents):
                continue
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def world(tmp_path):
    """A user's folder: decoys next to the job and inside it, and a job that is fine as it stands."""
    root = tmp_path / "user"
    for rel, data in DECOYS.items():
        for base in (root, root / "job"):
            (base / rel).parent.mkdir(parents=True, exist_ok=True)
            (base / rel).write_bytes(data)
    simulate_job(root / "job")
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "notes.txt").write_text("mine")
    return root


def edit(job: Path, section: str | None = None, **changes) -> None:
    path = job / protocol.JOB_FILE
    data = json.loads(path.read_text())
    (data[section] if section else data).update(changes)
    path.write_text(json.dumps(data))


def rewrite_scene(job: Path, **arrays) -> None:
    scene = protocol.load_npz(job / protocol.SCENE_FILE)
    scene.update(arrays)
    np.savez(job / protocol.SCENE_FILE, **scene)


def expect(root: Path, job: Path, code: int, fragment: str, sentinel: Path | None = None, runs: bool = False,
           timeout: float = 300) -> list:
    """Run the job; check the exit code, the one error message, and that the user's world is unchanged."""
    before = snapshot(root, skip=job / protocol.OUT_DIR if runs else None)
    rc, events, stderr = run_cli(job, timeout=timeout)
    errors = [e for e in events if e.kind == "error"]
    assert rc == code, (rc, [e.message for e in errors], stderr[-3000:])
    if code:
        assert len(errors) == 1 and fragment in errors[0].message, [e.message for e in errors]
        assert "Traceback" not in stderr and "Internal error" not in errors[0].message
    else:
        assert any(fragment in e.message for e in events), [e.message for e in events]
    assert snapshot(root, skip=job / protocol.OUT_DIR if runs else None) == before
    if sentinel is not None:
        assert not sentinel.exists(), "code from a data file ran"
    assert not (job / protocol.LOCK_FILE).exists() or code == ExitCode.MISSING_RESOURCE
    return events


# ----------------------------------------------------------------------------- the job file
def _nested(depth: int) -> str:
    return '{"schema_version": 1, "command": "simulate", "label": ' + "[" * depth + "]" * depth + "}"


JOB_CASES = {
    # id: (change to job.json, expected fragment). All exit 2 before anything heavy loads.
    "output_parent": (dict(output="../../somewhere"), "'output' = '../../somewhere' must be a path inside the job"),
    "output_absolute": (dict(output="/tmp/splat-physics-abs"), "must be a path inside the job folder"),
    "output_dotdot_inside": (dict(output="out/../../x"), "must be a path inside the job folder"),
    "scene_parent": (dict(scene="../elsewhere.npz"), "'scene' = '../elsewhere.npz' must be a path inside"),
    "scene_absolute": (dict(scene="/etc/passwd"), "must be a path inside the job folder"),
    "unknown_top_key": (dict(outputs="x"), "job has unknown key(s) outputs"),
    "unknown_setting": (dict(simulation={"n_gird": 32}), "simulation has unknown setting(s) n_gird"),
    "n_grid_cap": (dict(simulation={"n_grid": 1024}), "simulation.n_grid = 1024 is outside [12, 512]"),
    "n_grid_type": (dict(simulation={"n_grid": "64"}), "simulation.n_grid must be an integer"),
    "huge_integer": (dict(simulation={"n_frames": 10 ** 400}), "simulation.n_frames is far too large"),
    "infinite_number": (dict(simulation={"fps": float("inf")}), "simulation.fps must be finite"),
    "nan_vector": (dict(simulation={"gravity": [0, 0, float("nan")]}), "simulation.gravity[2] must be finite"),
    "poke_zero_window": (dict(simulation={"pokes": [{"center": [0, 0, 0.1], "radius": 0.05, "direction": [1, 0, 0],
                                                     "strength": 5, "start": 0.1, "end": 0.1}]}),
                         "simulation.pokes[0].end = 0.1 must be after its start"),
    "poke_missing_center": (dict(simulation={"pokes": [{"radius": 0.05}]}), "simulation.pokes[0].center is required"),
    "wind_zero_direction": (dict(simulation={"winds": [{"direction": [0, 0, 0], "strength": 1}]}),
                            "simulation.winds[0].direction must not be the zero vector"),
    "nu_range_reversed": (dict(command="estimate", estimate={"nu_range": [0.4, -0.2]}),
                          "estimate.nu_range = [0.4, -0.2] must be low < high inside (-1, 0.5)"),
    "bad_enum": (dict(simulation={"material_model": "jelly"}), "simulation.material_model must be one of"),
    "bad_command": (dict(command="format_disk"), "command must be one of simulate, estimate, preview"),
    "prompt_missing": (dict(command="estimate", estimate={"prior": "modelscope", "model": "a/b", "prompt": " "}),
                       "estimate.prompt is empty"),
    "camera_missing": (dict(command="preview"), "estimate.camera is needed"),
    "camera_zero_focal": (dict(command="preview", estimate={"camera": {"viewmat": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                                   [0, 0, 0, 1]],
                                                                       "K": [[0, 0, 8], [0, 0, 8], [0, 0, 1]],
                                                                       "width": 16, "height": 16}}),
                          "estimate.camera is not usable: camera focal lengths must be positive"),
    "list_not_object": (dict(simulation=[1, 2]), "simulation must be an object"),
    "nul_in_path": (dict(output="out\x00x"), "without NUL characters"),
}


@pytest.mark.parametrize("case", sorted(JOB_CASES))
def test_bad_job_settings(world, case):
    change, fragment = JOB_CASES[case]
    job = world / "job"
    data = json.loads((job / protocol.JOB_FILE).read_text())
    for key, value in change.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key].update(value)
        else:
            data[key] = value
    (job / protocol.JOB_FILE).write_text(json.dumps(data))
    expect(world, job, ExitCode.BAD_INPUT, fragment)


RAW_JOB_FILES = {
    "deeply_nested": (_nested(200000), "nested more than 64 levels"),
    "not_an_object": ("[1, 2, 3]", "must hold a JSON object"),
    "not_json": ("{not json", "not valid JSON"),
    "not_utf8": (b"\xff\xfe\x00{", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(RAW_JOB_FILES))
def test_bad_job_files(world, case):
    text, fragment = RAW_JOB_FILES[case]
    job = world / "job"
    path = job / protocol.JOB_FILE
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    expect(world, job, ExitCode.BAD_INPUT, fragment)


def test_job_file_holding_a_pickle(world):
    job, sentinel = world / "job", world.parent / "PWNED"
    (job / protocol.JOB_FILE).write_bytes(pickle_bytes(sentinel))
    expect(world, job, ExitCode.BAD_INPUT, protocol.JOB_FILE, sentinel)


# ----------------------------------------------------------------------------- links out of the job
def test_symlinked_output_folder_is_refused(world):
    job = world / "job"
    (job / "out").symlink_to(world / "elsewhere", target_is_directory=True)
    expect(world, job, ExitCode.BAD_INPUT, "out in the job folder is a symbolic link")


def test_symlink_inside_the_output_folder_is_refused(world):
    job = world / "job"
    (job / "out").mkdir()
    (job / "out" / "frames").symlink_to(world / "elsewhere", target_is_directory=True)
    expect(world, job, ExitCode.BAD_INPUT, "frames is a symbolic link")


def test_symlinked_scene_is_refused(world):
    job = world / "job"
    shutil.move(job / protocol.SCENE_FILE, world / "elsewhere" / "scene.npz")
    (job / protocol.SCENE_FILE).symlink_to(world / "elsewhere" / "scene.npz")
    expect(world, job, ExitCode.BAD_INPUT, "scene.npz in the job folder is a symbolic link")


# ----------------------------------------------------------------------------- scene.npz
SCENE_CASES = {
    "scale_overflow": ("scale", lambda a: _set(a, (3, 0), 50.0), "'scale' (log scale, metres) of point 3 is 50, outside [-30, 10]"),
    "opacity_logit": ("opacity", lambda a: _set(a, (7,), 1e5), "'opacity' (opacity logit) of point 7 is 100000"),
    "colour": ("f_dc", lambda a: _set(a, (2, 1), -1e9), "'f_dc' (SH DC colour coefficients) of point 2 is -1e+09"),
    "position_far": ("positions", lambda a: _set(a, (5, 2), 1e9), "'positions' (world-space centres, metres) of point 5"),
    "negative_E": ("youngs_modulus", lambda a: _set(a, (4,), -1.0), "'youngs_modulus' (Pa; the current or painted values) of point 4 is -1"),
    "nu_half": ("poisson_ratio", lambda a: _set(a, (0,), 0.5), "'poisson_ratio' (dimensionless) of point 0 is 0.5, outside (-1, 0.5)"),
    "material_id": ("material_id", lambda a: _set(a, (1,), 99), "'material_id'"),
    "nan": ("positions", lambda a: _set(a, (3, 1), np.nan), "'positions' has NaN or infinite values"),
}


def _set(a, index, value):
    a = a.copy()
    a[index] = value
    return a


@pytest.mark.parametrize("case", sorted(SCENE_CASES))
def test_scene_values_out_of_range(world, case):
    name, change, fragment = SCENE_CASES[case]
    job = world / "job"
    scene = protocol.load_npz(job / protocol.SCENE_FILE)
    n = len(scene["positions"])
    base = {"opacity": np.zeros(n, np.float32), "f_dc": np.zeros((n, 3), np.float32),
            "material_id": np.zeros(n, np.int32)}
    rewrite_scene(job, **{name: change(scene.get(name, base.get(name)))})
    expect(world, job, ExitCode.BAD_INPUT, fragment)


def test_particles_outside_the_domain(world):
    job = world / "job"
    edit(job, "simulation", domain_min=[0.0, 0.0, 0.0], domain_max=[0.3, 0.3, 0.3])
    expect(world, job, ExitCode.BAD_INPUT, "lie outside the simulation domain")


@pytest.mark.parametrize("form", ["object_array", "raw_pickle"])
def test_scene_holding_a_pickle(world, form):
    job, sentinel = world / "job", world.parent / "PWNED"
    if form == "object_array":
        pickled_npz(job / protocol.SCENE_FILE, sentinel)
    else:
        (job / protocol.SCENE_FILE).write_bytes(pickle_bytes(sentinel))
    expect(world, job, ExitCode.BAD_INPUT, "cannot read", sentinel)


# ----------------------------------------------------------------------------- the folder itself
def test_another_run_holds_the_lock(world):
    """A live run (here: this test process) holds the folder: the second run is refused and touches nothing."""
    job = world / "job"
    (job / protocol.LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                      "started": 0}))
    expect(world, job, ExitCode.MISSING_RESOURCE, f"another run (PID {os.getpid()} on this machine)")
    assert (job / protocol.LOCK_FILE).exists()


def test_a_lock_from_another_host_is_respected(world):
    job = world / "job"
    (job / protocol.LOCK_FILE).write_text(json.dumps({"pid": 12345, "host": "render-node-7", "started": 0}))
    expect(world, job, ExitCode.MISSING_RESOURCE, "on host render-node-7) is already working")


@contextlib.contextmanager
def read_only(folder: Path):
    """A truly read-only folder: a read-only bind mount as root (root ignores permission bits), else chmod."""
    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode:
        pytest.skip("cannot bind-mount here to make a read-only folder")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_read_only_job_folder(world):
    job = world / "job"
    with read_only(job):
        expect(world, job, ExitCode.BAD_INPUT, "No permission for")


# ----------------------------------------------------------------------------- real runs
def test_resume_files_from_elsewhere_never_run_and_a_stale_lock_is_taken_over(world):
    """A job folder from another machine: pickles as checkpoints, a stale lock of a dead run, our own and a
    user's temp-like files. The bake runs, ignores the checkpoints (saying so), never executes them, takes over
    the lock (saying so), removes only our own temp leftovers and leaves every other file alone."""
    job, sentinel = world / "job", world.parent / "PWNED"
    out = job / "out"
    (out / "frames").mkdir(parents=True)
    pickled_npz(out / protocol.SIM_CHECKPOINT_FILE, sentinel)
    (out / "estimate_checkpoint.pt").write_bytes(pickle_bytes(sentinel))  # the old name: never opened
    ours = out / "frames" / ".frame_000003.splatphysics-tmp-999-0123abcd.npz"
    ours.write_bytes(b"half a frame")
    theirs = [out / ".notes.tmp-1", job / ".draft.splatphysics-tmp-1-0123abcd.txt", world / ".x.tmp-2"]
    for p in theirs:
        p.write_text("the user's")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (job / protocol.LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    os.utime(job / protocol.LOCK_FILE, (0, 0))
    before = snapshot(world, skip=out)
    first = subprocess.Popen([sys.executable, "-u", "-m", "backend", "run", str(job)], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = [first.stdout.readline()]  # "start": the lock is held from here on
    rc2, events2, _ = run_cli(job)  # a second run on the same folder, while the first works
    lines += first.stdout.readlines()
    stderr = first.stderr.read()
    assert first.wait() == ExitCode.OK, stderr[-3000:]
    assert rc2 == ExitCode.MISSING_RESOURCE and f"another run (PID {first.pid} on this machine)" in events2[-1].message
    events = [protocol.Event.from_json(line) for line in lines if line.strip()]
    assert events[0].kind == "start", events[0]
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any("Took over the lock of an earlier run" in w and str(dead.pid) in w for w in warnings), warnings
    assert any(w.startswith("Not resuming: cannot read") for w in warnings), warnings
    assert not sentinel.exists(), "code from a checkpoint ran"
    before.pop("job/" + protocol.LOCK_FILE)
    assert snapshot(world, skip=out) == before  # the stale lock is gone, nothing else changed
    assert not ours.exists() and all(p.read_text() == "the user's" for p in theirs)
    assert len(list((out / "frames").glob("frame_*.npz"))) == 4

    # Our own checkpoint, poisoned with NaN but with the right fingerprint: not used, the bake starts over.
    state = protocol.load_npz(out / protocol.SIM_CHECKPOINT_FILE)
    state["x"][0, 0] = np.nan
    np.savez(out / protocol.SIM_CHECKPOINT_FILE, **state)
    edit(job, "simulation", n_frames=5)  # a longer bake would resume from the checkpoint
    rc, events, stderr = run_cli(job)
    assert rc == ExitCode.OK, stderr[-3000:]
    warnings = [e.message for e in events if e.kind == "warning"]
    assert any(w.startswith("Not resuming from sim_checkpoint.npz") and "finite" in w for w in warnings), warnings
    assert not any("Resuming from frame" in w for w in warnings)
    assert len(list((out / "frames").glob("frame_*.npz"))) == 5


def test_out_of_memory_is_a_missing_resource(world):
    """A real allocation failure (the process's address space capped, as a farm's memory limit does)."""
    resource = pytest.importorskip("resource")
    job = world / "job"
    edit(job, "simulation", fill={"enabled": True, "resolution": 1024, "max_particles": 1000})
    cap = 3 << 30

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    before = snapshot(world, skip=job / "out")
    proc = subprocess.run([sys.executable, "-m", "backend", "run", str(job)], capture_output=True, text=True,
                          cwd=REPO, preexec_fn=limit, timeout=300)
    errors = [protocol.Event.from_json(line) for line in proc.stdout.splitlines() if '"error"' in line]
    assert proc.returncode == ExitCode.MISSING_RESOURCE, proc.stderr[-2000:]
    assert "Out of memory while fill" in errors[0].message and "Traceback" not in proc.stderr
    assert snapshot(world, skip=job / "out") == before and not (job / protocol.LOCK_FILE).exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_full_disk_keeps_finished_frames(tmp_path):
    """A real full file system (a tiny tmpfs): exit 5 with the disk named, finished frames intact, no temp files."""
    mnt = tmp_path / "small_disk"
    if os.geteuid() != 0 or not _mount_tmpfs(mnt, "512k"):
        pytest.skip("needs root to mount a tiny tmpfs")
    try:
        for rel, data in DECOYS.items():
            (mnt / rel).parent.mkdir(parents=True, exist_ok=True)
            (mnt / rel).write_bytes(data)
        job = simulate_job(mnt / "job", n_frames=200)
        (mnt / "job" / "holiday.jpg").write_bytes(DECOYS["holiday.jpg"])
        free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
        (mnt / "filler.bin").write_bytes(b"\0" * max(free - 160 * 1024, 0))  # room for a few frames only
        events = expect(mnt, job, ExitCode.MISSING_RESOURCE, "The disk is full", runs=True)
        frames = protocol.iter_frame_files(job / "out")
        assert len(frames) >= 1
        for f in frames:  # every finished frame is complete
            protocol.check_arrays(protocol.load_npz(f), protocol.FRAME_ARRAYS, f.name)
        leftovers = [p for p in (job / "out").rglob("*") if protocol.TEMP_MARKER in p.name]
        assert not leftovers, leftovers
        assert any(e.kind == "start" for e in events)
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_hostile_reference_video(world):
    """An input the user names (a reference clip) is only read; a pickle posing as one never runs."""
    from support import estimate_scenes as es

    sentinel = world.parent / "PWNED"
    clip = world / "elsewhere" / "clip.mp4"
    clip.write_bytes(pickle_bytes(sentinel))
    job = world / "job"
    sim, est = es.settings(frames=2, groups=1, iterations=1, reference_video=str(clip))
    protocol.write_job(job, protocol.default_job("estimate", simulation=sim, estimate=est),
                       es.block_scene(5e3, n_side=3))
    expect(world, job, ExitCode.BAD_INPUT, "clip.mp4", sentinel, runs=True)


def test_model_folder_with_pickled_weights_is_refused(world):
    """A model folder whose weights are .bin pickles: refused (the job would exit 5) without opening them.
    check_model is what the estimate runs before loading anything."""
    from backend.prior import check_model

    sentinel, model = world.parent / "PWNED", world / "elsewhere" / "model"
    (model / "unet").mkdir(parents=True)
    parts = ("unet", "vae", "image_encoder", "scheduler", "feature_extractor")
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline",
                                                        **{p: ["diffusers", "X"] for p in parts}}))
    (model / "unet" / "config.json").write_text("{}")
    (model / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle_bytes(sentinel))
    ok, message = check_model("svd", str(model))
    assert not ok and "pickles that can run code" in message and not sentinel.exists()


def test_crafted_estimate_checkpoint_never_runs(world):
    """A pickle planted as the estimation checkpoint: the estimate ignores it (saying so), never executes it,
    and replaces it with its own arrays-and-JSON checkpoint."""
    from backend.io.video import write_frames_png
    from support import estimate_scenes as es

    job, sentinel = world / "job", world.parent / "PWNED"
    sim, est = es.settings(frames=2, groups=1, iterations=1)
    write_frames_png(np.zeros((2, est["camera"]["height"], est["camera"]["width"], 3), np.uint8),
                     world / "elsewhere" / "ref")
    est["reference_video"] = "../elsewhere/ref"  # an input the user names may lie outside: it is only read
    est["reference_fps"] = sim["fps"]  # bare frames carry no frame rate: the job gives it
    protocol.write_job(job, protocol.default_job("estimate", simulation=sim, estimate=est),
                       es.block_scene(5e3, n_side=3))
    (job / "out").mkdir()
    pickled_npz(job / "out" / protocol.ESTIMATE_CHECKPOINT_FILE, sentinel)
    expect(world, job, ExitCode.OK, "Not resuming from estimate_checkpoint.npz: it is unreadable", sentinel,
           runs=True)
    assert protocol.load_npz(job / "out" / protocol.ESTIMATE_CHECKPOINT_FILE)  # ours now, and pickle-free
