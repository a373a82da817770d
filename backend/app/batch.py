"""``python -m backend batch``: run many job folders on Ray, locally or on a cluster.

    python -m backend batch jobs/*/simulate            # folders or a glob, on this machine's cores
    python -m backend batch farm_simulate.json         # a manifest (Write Jobs for a Farm)
    python -m backend batch --address auto farm.json   # an existing Ray cluster

Each job runs as ``python -m backend run <folder>`` in a subprocess of a Ray task, exactly as the
add-on runs it, so the job's own cancel, checkpoints, log and exit codes apply unchanged. A
subprocess rather than the job in the Ray worker itself, because:

* a crash in native code (warp, the CUDA driver) or the OOM killer takes down only the job, and
  the task sees it and asks Ray for a retry, instead of Ray losing the worker mid-write;
* torch/warp global state (threads, CUDA context, kernel cache, logging) and GPU memory are per
  job and released at its end;
* SIGTERM to the subprocess is the backend's tested cancel path (it exits 3 at the next frame).
The price is starting Python and loading torch/warp per job (benchmarks/batch.py measures it).

A task whose worker dies (or whose backend is killed by a signal) is retried by Ray; the retry
runs the same folder again, and the backend resumes from its frame or iteration checkpoint. Exit
codes 2 (bad input), 4 (diverged) and the others are final: reported, never retried.

Job folders must be on storage every worker sees, at the same path (a shared file system): the
driver hashes each job.json and scene.npz, and the worker checks the hash before it starts the job.

stdout carries JSON lines (protocol.Event): every job's own events with ``data.job`` set, and the
batch's own under stage "batch" (totals, starts, finishes, the final table as the last "result").
The table also goes to ``<report>/report.json`` and, as text, to stderr.

Ray is an optional extra (requirements/ray.txt) that reads its environment when imported, so it is
imported inside the functions that use it: ``--help`` and a missing Ray are answered without it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import protocol
from ..jobctl import Reporter
from ..protocol import BadJob, Event, ExitCode

BACKEND_DIR = Path(__file__).resolve().parents[1]  # the backend package, shipped to Ray workers as a py_module
REPORT_FILE = "report.json"
EVENTS_FILE = "events.jsonl"
DEFAULT_RETRIES = 3
LOCAL_OBJECT_STORE = 256 * 2**20  # the tasks return small dicts: a local run needs no big shared memory
POLL_S = 0.25
RAY_MISSING = ("Ray is not installed in this backend environment. Install the optional extra: "
               "pip install -r requirements/ray.txt (or tick 'Include Ray' and click Install Backend)")
SHARED_STORAGE = ("Job folders must be on storage every worker sees, at the same path (a shared file system "
                  "such as NFS); the driver and each worker must read the same job.json and scene.npz")

# Scheduling hints for Ray's `memory` resource, from peak RSS measured on the CPU backend (2026-11):
# an empty bake peaks at 0.38 GB, 27k particles at 0.41 GB (64^3) and 0.46 GB (128^3); an estimate of
# 512 points over 16 rendered frames at 0.59 GB, of 8k points at 0.79 GB. Rounded up, with margin.
SIM_BASE, SIM_PER_PARTICLE, SIM_PER_CELL = 512 * 2**20, 2048, 64
EST_BASE, EST_PER_PARTICLE_FRAME = 1024 * 2**20, 4096
PRIOR_WEIGHTS = {"svd": 8 * 2**30, "modelscope": 8 * 2**30}  # host copy of the video model while loading


class BackendKilled(RuntimeError):
    """The backend subprocess died from a signal nobody asked for (OOM killer, node trouble): retry it."""


# ---------------------------------------------------------------------------- the jobs
@dataclass
class BatchJob:
    name: str
    folder: Path
    command: str = ""
    device: str = "auto"
    digest: str = ""
    scene_file: str = protocol.SCENE_FILE  # relative to the folder
    resources: dict = field(default_factory=dict)
    error: BadJob | None = None  # found before submitting: reported, never run


def collect_folders(sources: list[str]) -> list[tuple[Path, str]]:
    """(absolute job folder, label) for each source: a job folder, a glob of them, or a manifest file."""
    found: list[tuple[Path, str]] = []
    for src in sources:
        path = Path(src).expanduser()
        if path.is_dir():
            if not (path / protocol.JOB_FILE).is_file():
                raise BadJob(f"{path} has no {protocol.JOB_FILE}: give job folders, a glob of them, or a manifest")
            found.append((path.resolve(), ""))
        elif path.is_file():
            found.extend(protocol.read_manifest(path))
        elif glob.has_magic(src):
            hits = sorted(Path(p) for p in glob.glob(os.path.expanduser(src)))
            hits = [p.resolve() for p in hits if (p / protocol.JOB_FILE).is_file()]
            if not hits:
                raise BadJob(f"no job folders match {src!r}")
            found.extend((p, "") for p in hits)
        else:
            raise BadJob(f"not found: {src} (give job folders, a glob of them, or a manifest file)")
    seen: set[Path] = set()
    for folder, _ in found:
        if folder in seen:  # two runs on one folder would fight over its checkpoint
            raise BadJob(f"the job folder {folder} is listed twice")
        seen.add(folder)
    if not found:
        raise BadJob("no jobs to run")
    return found


def job_names(folders: list[tuple[Path, str]]) -> list[str]:
    """Short unique names for the table: the folder relative to the jobs' common parent."""
    paths = [f for f, _ in folders]
    base = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    names = [f.relative_to(base).as_posix() or f.name for f in paths]
    return names


def job_digest(folder: Path, scene_file: str = protocol.SCENE_FILE) -> str:
    """Hash of job.json and the scene file: equal on every node that sees the same folder."""
    h = hashlib.sha256()
    for name in (protocol.JOB_FILE, scene_file):
        h.update(name.encode() + b"\0")
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:32]


def scene_point_count(job: protocol.Job) -> int:
    """N for the memory hint; 0 when the scene is unreadable (the backend then reports why)."""
    try:
        with np.load(job.scene_path, allow_pickle=False) as z:
            return int(z["positions"].shape[0])
    except Exception:
        return 0


def memory_estimate(job: protocol.Job, n_points: int) -> int:
    """Bytes of host memory the job may peak at: a scheduling hint for Ray, not a limit."""
    sim = job.simulation
    if job.command == "simulate":
        fill = sim["fill"].get("max_particles", 0) if sim["fill"].get("enabled") else 0
        return int(SIM_BASE + SIM_PER_PARTICLE * (n_points + fill) + SIM_PER_CELL * sim["n_grid"] ** 3)
    est = job.estimate
    n_sim = min(n_points, est["max_particles"]) if est["max_particles"] else n_points
    frames = est["frames_per_group"] * est["boost_groups"]
    return int(EST_BASE + EST_PER_PARTICLE_FRAME * n_sim * frames + PRIOR_WEIGHTS.get(est["prior"], 0)
               + SIM_PER_CELL * sim["n_grid"] ** 3)


def job_resources(job: protocol.Job, n_points: int, cpus: float, cluster_has_gpu: bool,
                  memory_override: int | None = None) -> dict:
    """Ray resources of one job: a GPU for device 'cuda' (and for estimation on 'auto' when the cluster
    has GPUs), CPUs otherwise; the memory hint keeps the scheduler from overloading a node."""
    wants_gpu = job.device == "cuda" or (job.device == "auto" and job.command != "simulate" and cluster_has_gpu)
    if not wants_gpu and job.simulation.get("threads"):  # a bake asking for k threads gets k cores
        cpus = max(cpus, float(job.simulation["threads"]))
    return {"num_cpus": cpus, "num_gpus": 1 if wants_gpu else 0,
            "memory": memory_override if memory_override is not None else memory_estimate(job, n_points)}


def prepare_jobs(folders: list[tuple[Path, str]], cpus: float, cluster_has_gpu: bool,
                 memory_override: int | None) -> list[BatchJob]:
    """Read and hash every job before anything is submitted; a bad one is kept with its error."""
    jobs = []
    for (folder, label), name in zip(folders, job_names(folders)):
        bj = BatchJob(label or name, folder)
        try:
            job = protocol.read_job(folder)
            bj.command, bj.device = job.command, job.device
            bj.scene_file = os.path.relpath(job.scene_path, folder)
            bj.digest = job_digest(folder, bj.scene_file)
            bj.resources = job_resources(job, scene_point_count(job), cpus, cluster_has_gpu, memory_override)
        except BadJob as exc:
            bj.error = exc
        except OSError as exc:
            bj.error = BadJob(f"cannot read the job folder {folder}: {exc}")
        jobs.append(bj)
    names = [j.name for j in jobs]
    for j in jobs:  # labels need not be unique (two objects called "Cube" in two scenes)
        if names.count(j.name) > 1:
            j.name = f"{j.name} ({j.folder.parent.name}/{j.folder.name})"
    return jobs


def infeasible(job: BatchJob, nodes: list[dict]) -> str:
    """Why no live node can ever run the job ('' if one can): Ray would otherwise wait for it forever."""
    need = {"CPU": job.resources["num_cpus"], "GPU": job.resources["num_gpus"], "memory": job.resources["memory"]}
    if any(all(n.get(k, 0.0) >= v for k, v in need.items() if v) for n in nodes):
        return ""
    if need["GPU"] and not any(n.get("GPU") for n in nodes):
        return (f"the job needs a GPU (device {job.device!r}) but no Ray node has one; set the job's device to "
                "'cpu' or add GPU nodes")
    biggest = max((n.get("memory", 0.0) for n in nodes), default=0.0)
    return (f"no Ray node has {need['CPU']:g} CPU(s){' and a GPU' if need['GPU'] else ''} with "
            f"{need['memory'] / 2**30:.1f} GiB of memory (the largest offers {biggest / 2**30:.1f} GiB); "
            "lower the particle count or pass --memory-per-job")


# ---------------------------------------------------------------------------- on the worker
class Hub:
    """One small actor per batch that carries the tasks' events to the driver and numbers their attempts.

    Tasks only ever call it fire-and-forget while their job runs: a task that blocks in ray.get or
    ray.wait lends its CPUs back to Ray, which then starts more jobs than the node has cores."""

    def __init__(self):
        self._lines: list[tuple[str, int, str]] = []
        self._attempt: dict[str, int] = {}  # attempt token -> attempt number
        self._count: collections.Counter = collections.Counter()

    def begin(self, name: str, token: str) -> None:
        self._count[name] += 1
        self._attempt[token] = self._count[name]

    def put(self, name: str, token: str, lines: list[str]) -> None:
        attempt = self._attempt.get(token, 0)
        self._lines.extend((name, attempt, line) for line in lines)

    def drain(self) -> list[tuple[str, int, str]]:
        lines, self._lines = self._lines, []
        return lines


def _die_with_parent() -> None:
    """In the child: SIGKILL when the Ray worker dies, so a retry never races an orphan on the same folder."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(ExitCode.CANCELLED)


def _child_env(cpus: float, has_gpu: bool) -> dict:
    env = os.environ.copy()
    root = str(BACKEND_DIR.parent)  # wherever this backend is on this node (py_modules)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = str(max(1, int(cpus)))  # torch's threads = the CPUs Ray reserved
    if not has_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU reserved: 'auto' must not take one from another task
    return env


def _attempt_number() -> int:
    """0 on a task's first run, k on its k-th retry (Ray's own count; 0 where this Ray does not tell)."""
    import ray

    core = getattr(ray._private.worker.global_worker, "core_worker", None)
    try:
        return int(core.get_current_task_attempt_number())
    except Exception:  # noqa: BLE001 - a private API: without it a retry simply does not take over locks
        return 0


def _take_over_lost_lock(folder: Path, submitted_at: float) -> str:
    """On a retry, the job's lock may name the node its previous attempt died on. The backend takes over
    a dead run's lock on its own host only; another host's it cannot check. But a retry starts only once
    Ray has declared the previous attempt dead, so a lock from another host taken after this batch
    submitted the job is that attempt's, and stale. Returns a note when it was removed."""
    path = folder / protocol.LOCK_FILE
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
        host, pid, started = str(holder["host"]), holder["pid"], float(holder["started"])
    except (OSError, ValueError, TypeError, KeyError):
        return ""
    if host == socket.gethostname() or started < submitted_at:  # ours to check, or not this batch's
        return ""
    path.unlink(missing_ok=True)
    return f"took over the lock of its previous attempt (PID {pid} on {host}, a node that was lost)"


def _interruptible() -> None:
    """ray.cancel interrupts a running task through PyErr_SetInterrupt, which does nothing while SIGINT is
    ignored, and a worker started from a background shell (`ray start ... &`, nohup) inherits that."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) in (
            signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _event(kind: str, message: str, **data) -> str:
    return Event(kind, stage="batch", message=message, data=data).to_json()


def run_on_worker(spec: dict, hub) -> dict:
    """The body of one Ray task: check the folder, run the backend on it, forward its events.

    A cancel arrives as ray.cancel, i.e. a KeyboardInterrupt here: it is passed on to the backend as
    SIGTERM, which stops at its next frame or iteration and exits 3 with its checkpoint kept."""
    import ray

    _interruptible()
    name, folder = spec["name"], Path(spec["folder"])
    token = f"{os.getpid()}:{time.time_ns()}"
    hub.begin.remote(name, token)
    send = lambda lines: hub.put.remote(name, token, lines)  # noqa: E731 (ordered: one caller, one actor)
    node = ray.util.get_node_ip_address()
    outcome = {"name": name, "node": node, "exit_code": None, "message": "", "result": {}, "figures": {}}
    proc = None
    try:
        try:
            digest = job_digest(folder, spec["scene_file"])
        except OSError as exc:
            digest = f"unreadable ({exc.strerror or exc})"
        if digest != spec["digest"]:
            message = (f"node {node} does not see the job folder as the driver does ({folder}: {digest}). "
                       + SHARED_STORAGE)
            ray.get(send([Event("error", message=message,
                                data={"exit_code": int(ExitCode.MISSING_RESOURCE)}).to_json()]))
            return dict(outcome, exit_code=int(ExitCode.MISSING_RESOURCE), message=message)
        note = _take_over_lost_lock(folder, spec["submitted_at"]) if _attempt_number() > 0 else ""
        if note:
            send([_event("warning", f"{name}: {note}", job=name)])
        has_gpu = bool(ray.get_gpu_ids())
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-u", "-m", "backend", "run", str(folder)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=_child_env(spec["cpus"], has_gpu),
                                preexec_fn=_die_with_parent if os.name == "posix" else None)
        send([_event("stage", f"{name}: started on {node}", job=name, node=node, worker_pid=os.getpid(),
                     backend_pid=proc.pid)])
        code, last_error, result, stderr_tail, cancelled = _follow(proc, send)
    except KeyboardInterrupt:  # cancelled before the backend was following along
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
        return dict(outcome, exit_code=int(ExitCode.CANCELLED), message="cancelled; the job folder is resumable")
    if code < 0 and not cancelled:  # killed from outside: let Ray retry it (resumes from the checkpoint)
        raise BackendKilled(f"{name}: the backend was killed by {signal.Signals(-code).name} on {node}")
    if code < 0:
        code = int(ExitCode.CANCELLED)  # SIGTERM before the backend had installed its handler
    message = last_error or ("finished" if code == 0 else protocol.EXIT_MEANINGS.get(code, f"exit code {code}"))
    if code == ExitCode.INTERNAL and not last_error and stderr_tail:
        message = stderr_tail[-1]
    return dict(outcome, exit_code=code, message=message, result=result, seconds=time.monotonic() - started,
                figures=figures(folder, result))


def _follow(proc: subprocess.Popen, send) -> tuple[int, str, dict, list[str], bool]:
    """Forward the backend's events in small batches until it exits; a KeyboardInterrupt (ray.cancel)
    becomes SIGTERM to the backend. Returns (exit code, last error message, result, stderr tail, cancelled)."""
    import ray

    lines: list[str] = []
    lock = threading.Lock()
    stderr_tail: collections.deque = collections.deque(maxlen=20)
    last = {"error": "", "result": {}}

    def read_stdout():
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").strip()
            try:
                ev = Event.from_json(line)
            except ValueError:
                continue  # stray library output: not an event
            if ev.kind == "error":
                last["error"] = ev.message
            elif ev.kind == "result":
                last["result"] = ev.data
            with lock:
                lines.append(line)

    def read_stderr():
        for raw in proc.stderr:
            stderr_tail.append(raw.decode("utf-8", errors="replace").rstrip())

    def flush():
        with lock:
            batch, lines[:] = lines[:], []
        return send(batch) if batch else None

    readers = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
    for t in readers:
        t.start()
    cancelled = False
    while True:
        try:
            while proc.poll() is None:
                time.sleep(POLL_S)
                flush()
            break
        except KeyboardInterrupt:
            if not cancelled:
                proc.send_signal(signal.SIGTERM)
                cancelled = True
    for t in readers:
        t.join(timeout=10)
    last_put = flush()
    while True:
        try:
            if last_put is not None:
                ray.get(last_put)  # everything is at the hub before the task returns (the job is over)
            break
        except KeyboardInterrupt:
            continue
    return proc.returncode, last["error"], last["result"], list(stderr_tail), cancelled


def figures(folder: Path, result: dict) -> dict:
    """The table's key figures: frames written for a bake, E percentiles for an estimate."""
    if result.get("command") == "estimate":
        return {k: result[k] for k in (*protocol.E_PERCENTILES, "iterations", "converged") if k in result}
    try:
        out = protocol.read_job(folder).output_dir
    except BadJob:
        return {}
    frames = len(list(protocol.iter_frame_files(out)))
    return {"frames_written": frames, **({"n_frames": result["n_frames"]} if "n_frames" in result else {})}


# ---------------------------------------------------------------------------- on the driver
class Progress:
    """Every job's state, the aggregated JSON-lines stream, and the final table."""

    def __init__(self, jobs: list[BatchJob], reporter: Reporter, events_file):
        self.jobs = {j.name: j for j in jobs}
        self.reporter = reporter
        self.events_file = events_file
        self.fraction = {j.name: 0.0 for j in jobs}
        self.started: dict[str, float] = {}
        self.attempts: collections.Counter = collections.Counter()
        self.rows: dict[str, dict] = {}
        self._last_total = 0.0

    def emit(self, kind: str, **fields) -> None:
        ev = self.reporter.emit(kind, **fields)
        self.events_file.write(ev.to_json() + "\n")
        self.events_file.flush()

    def forward(self, name: str, attempt: int, line: str) -> None:
        try:
            ev = Event.from_json(line)
        except ValueError:
            return
        self.started.setdefault(name, time.monotonic())
        self.attempts[name] = max(self.attempts[name], attempt)
        if ev.kind == "progress" and ev.fraction is not None:
            self.fraction[name] = ev.fraction
        message = f"{name}: {ev.message}" if ev.message and ev.stage != "batch" else ev.message
        if ev.stage == "batch" and "backend_pid" in ev.data and attempt > 1:
            message += f" (attempt {attempt}: the previous one was lost; the job resumes from its checkpoint)"
        self.emit(ev.kind, stage=ev.stage, step=ev.step, total=ev.total, loss=ev.loss, eta_s=ev.eta_s,
                  message=message, data=dict(ev.data, job=name, attempt=attempt))

    def finish(self, name: str, row: dict) -> None:
        job = self.jobs[name]
        start = self.started.get(name)
        row = {"job": name, "folder": str(job.folder), "command": job.command, **row}
        row["attempts"] = max(row.get("attempts", 0), self.attempts[name])
        # Wall time from the first start seen, over every attempt; the worker's own figure otherwise.
        row["seconds"] = time.monotonic() - start if start else row.get("seconds", 0.0)
        self.rows[name] = row
        self.fraction[name] = 1.0
        self.emit("stage", stage="batch", message=f"{name}: {row['status']} ({row['message']})",
                  data={"job": name, "status": row["status"], "exit_code": row["exit_code"]})
        self.total(force=True)

    def total(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_total < 1.0:
            return
        self._last_total = now
        done = len(self.rows)
        statuses = collections.Counter(r["status"] for r in self.rows.values())
        frac = sum(self.fraction.values()) / max(len(self.fraction), 1)
        self.emit("progress", stage="batch", step=done, total=len(self.jobs),
                  message=f"{done} of {len(self.jobs)} jobs done", data={
                      "fraction": frac, "running": len(set(self.started) - set(self.rows)), **statuses})

    def table(self) -> list[dict]:
        return [self.rows[name] for name in self.jobs if name in self.rows]


def status_of(exit_code: int | None) -> str:
    if exit_code is None:
        return "lost"
    try:
        return ExitCode(exit_code).name.lower()
    except ValueError:
        return f"exit {exit_code}"


def row_from(outcome: dict, attempts: int) -> dict:
    return {"status": status_of(outcome["exit_code"]), "exit_code": outcome["exit_code"],
            "message": outcome["message"], "attempts": attempts, "node": outcome.get("node", ""),
            "figures": outcome.get("figures", {}), **({"seconds": outcome["seconds"]} if "seconds" in outcome else {})}


def lost_row(exc: BaseException, retries: int) -> dict:
    """A task Ray gave up on: its worker died (or its backend was killed) on every attempt."""
    cause = getattr(exc, "cause", None) or exc
    why = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return {"status": "lost", "exit_code": None, "attempts": retries + 1, "figures": {},
            "message": f"gave up after {retries + 1} attempts: {why}. The folder is resumable: run the batch again"}


def format_table(rows: list[dict]) -> str:
    head = ("job", "status", "exit", "seconds", "tries", "figures")
    body = []
    for r in rows:
        figs = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["figures"].items())
        body.append((r["job"], r["status"], "" if r["exit_code"] is None else str(r["exit_code"]),
                     f"{r.get('seconds', 0.0):.1f}", str(r.get("attempts", "")), figs or r["message"][:60]))
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*line) for line in (head, *body))


def batch_exit_code(rows: list[dict], cancelled: bool) -> int:
    """0 when every job finished; 3 when cancelled; else the first failed job's code (1 for a lost one)."""
    if cancelled:
        return ExitCode.CANCELLED
    for r in rows:
        if r["exit_code"] != 0:
            return r["exit_code"] if r["exit_code"] is not None else ExitCode.INTERNAL
    return ExitCode.OK


def default_report_dir(sources: list[str], folders: list[tuple[Path, str]]) -> Path:
    """Next to the manifest (<name>_report), else beside the jobs' common parent."""
    for src in sources:
        p = Path(src).expanduser()
        if p.is_file():
            return p.resolve().with_name(p.stem + "_report")
    paths = [f for f, _ in folders]
    return (Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent) / "batch_report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sources", nargs="+", metavar="JOBS",
                   help="job folders, a glob of them (quoted), or a manifest file from Write Jobs for a Farm. "
                        + SHARED_STORAGE)
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster ('auto' or host:port); default: a local Ray on this machine")
    p.add_argument("--report", default=None,
                   help="folder for report.json and events.jsonl (default: next to the manifest)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--cpus-per-job", type=float, default=1.0,
                   help="CPUs reserved per job, and the threads it may use (default 1; a job whose "
                        "simulation.threads asks for more gets that many)")
    p.add_argument("--memory-per-job", type=float, default=None,
                   help="GiB of memory reserved per job (default: estimated from each job's size)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES,
                   help=f"retries of a job whose worker dies (default {DEFAULT_RETRIES})")
    p.add_argument("--dry-run", action="store_true",
                   help="check every job and list what each would reserve, without starting Ray")


def cmd_batch(args: argparse.Namespace) -> int:
    # stdout carries only events; Ray's and libraries' chatter goes to stderr.
    events_stream = sys.stdout
    sys.stdout = sys.stderr
    reporter = Reporter(events_stream)
    try:
        return _batch(args, reporter)
    except protocol.JobError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        reporter.emit("error", stage="batch", message=exc.message, data={"exit_code": int(exc.exit_code)})
        return exc.exit_code
    finally:
        sys.stdout = events_stream


def _batch(args: argparse.Namespace, reporter: Reporter) -> int:
    if args.memory_per_job is not None and args.memory_per_job <= 0:
        raise BadJob("--memory-per-job must be a positive number of GiB")
    if args.cpus_per_job <= 0 or args.retries < 0:
        raise BadJob("--cpus-per-job must be positive and --retries not negative")
    folders = collect_folders(args.sources)
    memory = int(args.memory_per_job * 2**30) if args.memory_per_job else None
    if args.dry_run:
        return _dry_run(prepare_jobs(folders, args.cpus_per_job, False, memory), reporter)
    report_dir = Path(args.report).expanduser().resolve() if args.report else default_report_dir(args.sources, folders)
    if not args.address:  # a local Ray only listens on the loopback interface (set before ray is imported)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise protocol.MissingResource(RAY_MISSING) from None
    _connect(ray, args)
    try:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        has_gpu = any(n.get("GPU") for n in nodes)
        jobs = prepare_jobs(folders, args.cpus_per_job, has_gpu, memory)
        report_dir.mkdir(parents=True, exist_ok=True)
        with open(report_dir / EVENTS_FILE, "w", encoding="utf-8") as events_file:
            progress = Progress(jobs, reporter, events_file)
            cancelled = _run(ray, jobs, nodes, args.retries, progress)
        rows = progress.table()
        code = batch_exit_code(rows, cancelled)
        report = {"jobs": rows, "exit_code": int(code), "cancelled": cancelled,
                  "ray": {"address": args.address or "local", "nodes": len(nodes)}}
        protocol.atomic_write_json(report_dir / REPORT_FILE, report)
        print(format_table(rows), file=sys.stderr)
        reporter.emit("result", stage="batch", message=f"report: {report_dir / REPORT_FILE}",
                      data={"report": str(report_dir / REPORT_FILE), "exit_code": int(code), "jobs": rows})
        return code
    finally:
        ray.shutdown()


def _dry_run(jobs: list[BatchJob], reporter: Reporter) -> int:
    """The plan without Ray: every job checked, with what it would reserve (GPUs as if the cluster had none)."""
    plan = [{"job": j.name, "folder": str(j.folder), "command": j.command, "resources": j.resources,
             "error": j.error.message if j.error else ""} for j in jobs]
    for p in plan:
        res = p["resources"]
        what = (f"{res['num_cpus']:g} CPU, {res['num_gpus']} GPU, {res['memory'] / 2**30:.2f} GiB"
                if res else f"error: {p['error']}")
        print(f"{p['job']}: {p['command'] or '?'} in {p['folder']} ({what})", file=sys.stderr)
    bad = [j for j in jobs if j.error]
    reporter.emit("result", stage="batch", message=f"{len(jobs) - len(bad)} of {len(jobs)} job(s) ready",
                  data={"jobs": plan})
    return bad[0].error.exit_code if bad else ExitCode.OK


def _check_reachable(address: str) -> None:
    """A host:port that answers nothing fails here in seconds; Ray itself would keep retrying for minutes."""
    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        raise protocol.MissingResource(f"cannot reach the Ray cluster at {address!r} ({exc}). Start it with "
                                       "`ray start --head` on that machine, or check the address") from None


def _connect(ray, args) -> None:
    runtime_env = {"py_modules": [str(BACKEND_DIR)], "excludes": ["__pycache__", "*.pyc"]}
    if args.address:
        _check_reachable(args.address)
        try:
            ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise protocol.MissingResource(f"cannot join the Ray cluster at {args.address!r}: {str(exc).rstrip('.')}. Start it with "
                                           "`ray start --head` (or check the address), then run the batch again")

    else:
        # Ray retries a task its memory monitor killed without end by default: a job too big for this machine
        # must fail after --retries instead (a cluster keeps its own RAY_task_oom_retries).
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                 runtime_env=runtime_env, log_to_driver=False, _system_config={"task_oom_retries": args.retries})


def _run(ray, jobs: list[BatchJob], nodes: list[dict], retries: int, progress: Progress) -> bool:
    """Submit, follow and collect every job. Returns whether the batch was cancelled."""
    stop = {"count": 0}

    def on_signal(signum, frame):
        stop["count"] += 1

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        hub = ray.remote(Hub).options(num_cpus=0).remote()
        task = ray.remote(run_on_worker)
        pending: dict = {}
        rejected: list[tuple[str, dict]] = []
        for job in jobs:
            why = job.error.message if job.error else infeasible(job, nodes)
            if why:
                code = job.error.exit_code if job.error else ExitCode.MISSING_RESOURCE
                rejected.append((job.name, {"status": status_of(code), "exit_code": int(code), "message": why,
                                            "attempts": 0, "figures": {}, "seconds": 0.0}))
                continue
            spec = {"name": job.name, "folder": str(job.folder), "digest": job.digest, "scene_file": job.scene_file,
                    "cpus": job.resources["num_cpus"], "submitted_at": time.time()}
            ref = task.options(**job.resources, max_retries=retries, retry_exceptions=[BackendKilled],
                               name=f"splat:{job.name}").remote(spec, hub)
            pending[ref] = job.name
        progress.emit("stage", stage="batch", message=f"{len(pending)} job(s) submitted to Ray "
                      f"({len(nodes)} node(s)); " + SHARED_STORAGE, data={"jobs": len(pending)})
        for name, row in rejected:  # reported, never run: the others go on
            progress.finish(name, row)
        cancelling = False
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_S)
            for name, attempt, line in ray.get(hub.drain.remote()):
                progress.forward(name, attempt, line)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    row = row_from(ray.get(ref), progress.attempts[name])
                except ray.exceptions.TaskCancelledError:  # cancelled while queued: it never started
                    row = {"status": "cancelled", "exit_code": int(ExitCode.CANCELLED), "attempts": 0,
                           "figures": {}, "message": "cancelled; the job folder is resumable"}
                except (ray.exceptions.RayTaskError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.NodeDiedError, ray.exceptions.RayError) as exc:
                    row = lost_row(exc, retries)
                progress.finish(name, row)
            progress.total()
            if stop["count"] and not cancelling:
                cancelling = True
                for ref in pending:  # queued: dropped; running: SIGTERM to its backend (run_on_worker)
                    ray.cancel(ref)
                progress.emit("stage", stage="batch", message="cancelling: running jobs stop at their next frame or "
                              "iteration and stay resumable; queued jobs do not start (again to force)")
            if stop["count"] > 1:
                for ref in pending:
                    ray.cancel(ref, force=True)
                stop["count"] = 1  # force once; the loop collects the cancelled tasks
        return cancelling
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
