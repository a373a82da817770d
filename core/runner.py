"""Supervises one backend subprocess: start, stream progress, cancel, report.

Plain Python (no bpy) so it is tested headless; the modal operator only calls ``tick()`` from a
timer. Reader threads turn the child's stdout (JSON-lines events) and stderr (log text) into a
queue; ``tick()`` drains it on the caller's thread, because bpy must never be touched from another
thread. stderr is also copied to a log file that error messages point to.
"""

from __future__ import annotations

import enum
import json
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..backend import protocol


class RunState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    CANCELLING = "cancelling"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED = (RunState.DONE, RunState.FAILED, RunState.CANCELLED)


@dataclass
class RunResult:
    state: RunState
    exit_code: int | None
    message: str
    log_path: Path | None
    events: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.state is RunState.DONE


# What every backend run imports: (module, pip package). backend/app/doctor.py reports the same core set.
CORE_MODULES = (("numpy", "numpy"), ("torch", "torch"), ("warp", "warp-lang"))
PROBE_TIMEOUT = 60.0  # seconds for the interpreter check (a cold start on a busy machine can be slow)
_PROBE = ("import sys, json, importlib.util as u; print(json.dumps({'version': list(sys.version_info[:2]), "
          "'missing': [m for m in sys.argv[1:] if u.find_spec(m) is None]}))")
_FIX = ("Click Install Backend in Edit > Preferences > Add-ons > Splat Physics, or set Backend Python to the "
        "python of an environment that has the backend packages (requirements/backend.txt)")
_GOOD: set = set()  # interpreters (path, mtime, modules) that passed the check in this session


def interpreter_path_problem(python: str) -> str | None:
    """What is wrong with ``python`` as a path (missing, a folder, not executable), or None. Runs nothing."""
    if not python:
        return f"No backend Python is set. {_FIX}"
    path = Path(python)
    if path.is_dir():
        hint = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        return (f"The backend Python '{python}' is a folder, not a Python interpreter. Pick the python inside it"
                f"{f' ({hint})' if hint.is_file() else ''}, or click Install Backend in the add-on preferences")
    if not path.exists():
        return f"The backend Python interpreter was not found: '{python}' does not exist. {_FIX}"
    if not os.access(path, os.X_OK):
        return f"The backend Python '{python}' is not executable. {_FIX}"
    return None


def interpreter_problem(python: str, modules=CORE_MODULES, timeout: float = PROBE_TIMEOUT) -> str | None:
    """Why ``python`` cannot run the backend, in the artist's words; None when it can.

    Starts the interpreter once with a tiny script (nothing is imported, packages are only looked up), so
    a wrong choice in the preferences (/bin/false, a Python without torch) is named before any job is
    written. A passing interpreter is remembered until its file changes.
    """
    problem = interpreter_path_problem(python)
    if problem:
        return problem
    names = [m for m, _ in modules]
    try:
        # Not realpath: a virtual environment's python is a link to the base interpreter, whose packages differ.
        key = (os.path.abspath(python), os.stat(python).st_mtime_ns, tuple(names))
    except OSError as exc:
        return f"The backend Python '{python}' cannot be read ({exc.strerror or exc}). {_FIX}"
    if key in _GOOD:
        return None
    try:
        proc = subprocess.run([python, "-c", _PROBE, *names], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    except subprocess.TimeoutExpired:
        return f"The backend Python '{python}' did not answer within {timeout:.0f} s. {_FIX}"
    except OSError as exc:
        return (f"The backend Python '{python}' cannot be started ({exc.strerror or exc}); is it a Python "
                f"interpreter? {_FIX}")
    try:
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        version, missing = tuple(info["version"]), list(info["missing"])
    except (ValueError, KeyError, IndexError, TypeError):
        said = next((ln.strip() for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "")
        return (f"The backend Python '{python}' is not a working Python interpreter (it exited with code "
                f"{proc.returncode}{': ' + said[:160] if said else ' and said nothing'}). {_FIX}")
    if version < (3, 10):
        return (f"The backend Python '{python}' is Python {version[0]}.{version[1]}; the backend needs Python 3.11. "
                f"{_FIX}")
    if missing:
        pip = dict(modules)
        names = ", ".join(pip[m] for m in missing)
        return (f"The backend Python at '{python}' has no {names}. Click Install Backend in the add-on preferences, "
                "or pick an environment that has the backend packages (requirements/backend.txt)")
    _GOOD.add(key)
    return None


def addon_root() -> Path:
    """The folder that holds the ``backend`` package: it goes on the child's PYTHONPATH."""
    return Path(__file__).resolve().parents[1]


class JobRunner:
    """Run ``python -u -m backend <args>`` and follow it.

    ``args`` is e.g. ``["run", job_dir]`` or ``["doctor", "--json"]``. The interpreter is the one
    the add-on preferences name (the backend environment), never Blender's own Python.
    """

    def __init__(self, python: str, args: Sequence[str], log_path: str | os.PathLike | None = None,
                 cancel_file: str | os.PathLike | None = None, env: dict | None = None,
                 kill_timeout: float = 10.0):
        self.python = str(python)
        self.args = [str(a) for a in args]
        self.log_path = Path(log_path) if log_path else None
        self.cancel_file = Path(cancel_file) if cancel_file else None
        self.kill_timeout = kill_timeout
        self.env = env
        self.state = RunState.IDLE
        self.events: list[protocol.Event] = []
        self.last_progress: protocol.Event | None = None
        self.stage_message = ""
        self._queue: queue.Queue = queue.Queue()
        self._proc: subprocess.Popen | None = None
        self._threads: list[threading.Thread] = []
        self._log = None
        self._cancel_requested_at: float | None = None
        self._error_event: protocol.Event | None = None
        self._stderr_tail: list[str] = []
        self.result: RunResult | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "JobRunner":
        if self.state is not RunState.IDLE:
            raise RuntimeError("a JobRunner runs once; make a new one")
        problem = interpreter_path_problem(self.python)
        if problem:
            self._finish(RunState.FAILED, None, problem)
            return self
        env = dict(os.environ if self.env is None else self.env)
        root = str(addon_root())
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "a", encoding="utf-8")
            self._log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.python} -m backend {' '.join(self.args)}\n")
        try:
            # A list, never a shell: paths with spaces and non-ASCII characters pass through intact.
            self._proc = subprocess.Popen(
                [self.python, "-u", "-m", "backend", *self.args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                env=env, cwd=root, start_new_session=True,
            )
        except OSError as exc:
            self._finish(RunState.FAILED, None, f"Could not start the backend ({self.python}): {exc}")
            return self
        self.state = RunState.RUNNING
        for stream, name in ((self._proc.stdout, "out"), (self._proc.stderr, "err")):
            t = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self, stream, name: str) -> None:
        for raw in iter(stream.readline, b""):
            self._queue.put((name, raw.decode("utf-8", errors="replace").rstrip("\n")))
        stream.close()
        self._queue.put((name, None))

    def cancel(self) -> None:
        """Ask for a stop: cancel file + SIGTERM now; SIGKILL if still alive after kill_timeout (see tick)."""
        if self.state is not RunState.RUNNING:
            return
        self.state = RunState.CANCELLING
        self._cancel_requested_at = time.monotonic()
        if self.cancel_file:
            try:
                self.cancel_file.parent.mkdir(parents=True, exist_ok=True)
                self.cancel_file.touch()
            except OSError:
                pass
        self._signal(signal.SIGTERM)

    def _signal(self, sig) -> None:
        if self._proc and self._proc.poll() is None:
            try:
                self._proc.send_signal(sig)
            except ProcessLookupError:
                pass

    # ------------------------------------------------------------------ polling
    def tick(self) -> list[protocol.Event]:
        """Drain what arrived since the last call; update state. Call from the main thread only."""
        new: list[protocol.Event] = []
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is None:
                continue
            if name == "err":
                self._log_line(line)
                self._stderr_tail = (self._stderr_tail + [line])[-40:]
                continue
            event = self._parse(line)
            if event is not None:
                new.append(event)
        self.events.extend(new)
        for e in new:
            if e.kind == "progress":
                self.last_progress = e
            if e.message and e.kind in ("stage", "progress", "start"):
                self.stage_message = e.message
            if e.kind == "error":
                self._error_event = e
        if self.state is RunState.CANCELLING and self._cancel_requested_at is not None:
            if time.monotonic() - self._cancel_requested_at > self.kill_timeout:
                self._signal(signal.SIGKILL)
        if self.state in (RunState.RUNNING, RunState.CANCELLING) and self._proc.poll() is not None:
            if all(not t.is_alive() for t in self._threads) and self._queue.empty():
                self._conclude(self._proc.returncode)
        return new

    def _parse(self, line: str) -> protocol.Event | None:
        try:
            return protocol.Event.from_json(line)
        except (ValueError, TypeError):
            # Not an event (a stray print in a library): keep it in the log, not in the UI.
            self._log_line(f"[stdout] {line}")
            return None

    def _log_line(self, line: str) -> None:
        if self._log:
            self._log.write(line + "\n")
            self._log.flush()

    def _conclude(self, code: int) -> None:
        if code == protocol.ExitCode.OK:
            self._finish(RunState.DONE, code, "Finished")
            return
        cancelled = code == protocol.ExitCode.CANCELLED or (
            self._cancel_requested_at is not None and code in (-signal.SIGTERM, -signal.SIGKILL))
        if cancelled:
            self._finish(RunState.CANCELLED, code, "Cancelled. Earlier results were kept.")
            return
        self._finish(RunState.FAILED, code, self._failure_message(code))

    def _failure_message(self, code: int) -> str:
        if self._error_event is not None and self._error_event.message:
            msg = self._error_event.message
        elif code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            msg = f"The backend process was killed ({name}) before it finished"
        else:
            meaning = protocol.EXIT_MEANINGS.get(code, f"exit code {code}")
            tail = next((ln for ln in reversed(self._stderr_tail) if ln.strip()), "")
            msg = f"The backend stopped: {meaning}" + (f" ({tail.strip()[:200]})" if tail else "")
        return msg

    def _finish(self, state: RunState, code: int | None, message: str) -> None:
        self.state = state
        if self.log_path and state is not RunState.DONE:
            message = f"{message}. Details: {self.log_path}"
        self._log_line(f"--- {state.value} (exit {code}): {message}")
        if self._log:
            self._log.close()
            self._log = None
        self.result = RunResult(state, code, message, self.log_path, self.events)

    # ------------------------------------------------------------------ conveniences
    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    @property
    def fraction(self) -> float:
        f = self.last_progress.fraction if self.last_progress else None
        return 0.0 if f is None else f

    def wait(self, timeout: float | None = None, poll: float = 0.05, on_event=None) -> RunResult:
        """Block until the run ends (headless use: tests, the demo, the CLI)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.finished:
            for e in self.tick():
                if on_event:
                    on_event(e)
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(poll)
        return self.result


def run_backend(python: str, args: Sequence[str], **kwargs) -> RunResult:
    """Start, wait, return the result: for short calls such as ``doctor``."""
    timeout = kwargs.pop("timeout", None)
    on_event = kwargs.pop("on_event", None)
    return JobRunner(python, args, **kwargs).start().wait(timeout=timeout, on_event=on_event)


def read_result(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / protocol.RESULT_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
