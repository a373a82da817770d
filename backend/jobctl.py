"""What every backend command shares: progress events on stdout, cancellation, and error-to-exit-code mapping.

Standard library + numpy only (through protocol), so it loads before any heavy import.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from . import protocol
from .protocol import Event

log = logging.getLogger("backend")


class Reporter:
    """Writes events as JSON lines on stdout (the add-on reads them) and keeps the ETA arithmetic in one place."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._stage_start: dict[str, float] = {}
        self.current = "starting"  # what is running, in words, for error messages

    def emit(self, kind: str, **fields) -> Event:
        event = Event(kind, **fields)
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()
        return event

    def stage(self, stage: str, message: str, **fields) -> Event:
        self._stage_start[stage] = time.monotonic()
        self.current = f"{stage} ({message[:1].lower()}{message[1:]})" if message else stage
        log.info("%s: %s", stage, message)
        return self.emit("stage", stage=stage, message=message, **fields)

    def progress(self, stage: str, step: int, total: int, message: str = "", **fields) -> Event:
        """step counts finished units (1-based); the ETA extrapolates the stage's mean time per unit."""
        start = self._stage_start.setdefault(stage, time.monotonic())
        elapsed = time.monotonic() - start
        eta = elapsed / step * (total - step) if step > 0 else None
        return self.emit("progress", stage=stage, step=step, total=total, eta_s=eta, message=message, **fields)

    def warning(self, message: str, **fields) -> Event:
        log.warning(message)
        return self.emit("warning", message=message, **fields)


class CancelToken:
    """Set by SIGTERM/SIGINT or by a CANCEL file in the job folder; checked at safe points."""

    def __init__(self, cancel_file: Path | None = None):
        self.cancel_file = cancel_file
        self._flag = False

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            self._flag = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    @property
    def requested(self) -> bool:
        if not self._flag and self.cancel_file is not None and self.cancel_file.exists():
            self._flag = True
        return self._flag

    def check(self) -> None:
        """Raise Cancelled at a safe point if a stop was asked for."""
        if self.requested:
            raise protocol.Cancelled()


def setup_logging(log_file: Path | None = None, verbose: bool = False) -> None:
    """Logs go to stderr (the add-on copies them into its log file) and optionally into the job folder."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # warp prints module-load chatter on stdout; stdout belongs to the events.
    os.environ.setdefault("WARP_QUIET", "1")


class JobBusy(protocol.MissingResource):
    """Another run holds the job folder's lock."""


class JobLock:
    """One run per job folder: a lock file created exclusively, holding the holder's PID and host.

    A lock left by a run that died (same host, PID gone) is taken over, saying so. A lock from another
    host cannot be checked; the message says how to clear it if that run is gone.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / protocol.LOCK_FILE
        self.held = False

    def acquire(self) -> str | None:
        """Take the lock; returns a note when a stale lock was taken over. Raises JobBusy or BadJob."""
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None or self._alive(holder, me["host"]):
                    raise JobBusy(self._busy_message(holder, me["host"])) from None
                note = (f"took over the lock of an earlier run (PID {holder['pid']} on {holder['host']}) "
                        "that is no longer running")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return note
        raise JobBusy(self._busy_message(self._holder(), me["host"]))

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        try:  # remove it only while it is still ours
            if json.loads(self.path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                self.path.unlink()
        except (OSError, ValueError, AttributeError):
            pass

    def _holder(self) -> dict | None:
        """The lock's content; None while another run is still writing it (a fresh, empty lock)."""
        try:
            if self.path.stat().st_size == 0 and time.time() - self.path.stat().st_mtime < 10:
                return None
            with open(self.path, encoding="utf-8") as f:
                data = json.loads(f.read(4096))
            if isinstance(data, dict) and isinstance(data.get("pid"), int) and isinstance(data.get("host"), str):
                return data
        except FileNotFoundError:
            return {"pid": -1, "host": "", "started": 0}  # released meanwhile: try again
        except (OSError, ValueError):
            pass
        return {"pid": -1, "host": "", "started": 0, "garbled": True}  # not a lock we wrote: stale

    @staticmethod
    def _alive(holder: dict, host: str) -> bool:
        if holder["pid"] <= 0:
            return False
        if holder["host"] != host:
            return True  # cannot tell; assume it runs
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _busy_message(self, holder: dict | None, host: str) -> str:
        if holder is None:
            return f"another run is starting on this job folder right now ({self.path})"
        where = "this machine" if holder["host"] == host else f"host {holder['host']}"
        return (f"another run (PID {holder['pid']} on {where}) is already working on this job folder; wait for it "
                f"to finish or cancel it. If it is gone, delete {self.path}")
