"""What every backend command shares: progress events on stdout, cancellation, and error-to-exit-code mapping.

Standard library + numpy only (through protocol), so it loads before any heavy import.
"""

from __future__ import annotations

import logging
import signal
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

    def emit(self, kind: str, **fields) -> Event:
        event = Event(kind, **fields)
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()
        return event

    def stage(self, stage: str, message: str, **fields) -> Event:
        self._stage_start[stage] = time.monotonic()
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
    import os

    os.environ.setdefault("WARP_QUIET", "1")
