"""Registry of the backend runs the add-on has in flight, one per kind.

No bpy here (standard library only): the modal operator (operators/backend_ops.py) calls
``tick_all()`` from its timer, headless code (tests, the demo) calls ``wait()``. Completion callbacks
run on the caller's thread, so they may touch bpy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from .runner import JobRunner, RunResult


@dataclass
class ActiveJob:
    kind: str
    runner: JobRunner
    on_done: Callable[[RunResult], None] | None = None
    on_event: Callable | None = None
    label: str = ""
    done_called: bool = field(default=False)


_ACTIVE: dict[str, ActiveJob] = {}
# The last finished result per kind, for the panel (message, log path).
LAST_RESULT: dict[str, RunResult] = {}


def start(kind: str, runner: JobRunner, on_done=None, on_event=None, label: str = "") -> ActiveJob:
    """Start ``runner`` as the job of this kind. Refuses while one of the same kind still runs."""
    current = _ACTIVE.get(kind)
    if current is not None and not current.runner.finished:
        raise RuntimeError(f"A {kind} job is already running; cancel it first")
    job = ActiveJob(kind, runner, on_done, on_event, label)
    _ACTIVE[kind] = job
    runner.start()
    _settle(job)  # a runner can fail at start (no interpreter): report it at once
    return job


def active(kind: str) -> ActiveJob | None:
    job = _ACTIVE.get(kind)
    return job if job is not None and not job.done_called else None


def cancel(kind: str) -> bool:
    job = _ACTIVE.get(kind)
    if job is None or job.runner.finished:
        return False
    job.runner.cancel()
    return True


def tick_all() -> bool:
    """Advance every job; run completion callbacks. Returns True while any job is still running."""
    for job in list(_ACTIVE.values()):
        if job.done_called:
            continue
        events = job.runner.tick()
        if job.on_event:
            for e in events:
                job.on_event(e)
        _settle(job)
    return any(not j.done_called for j in _ACTIVE.values())


def _settle(job: ActiveJob) -> None:
    if job.runner.finished and not job.done_called:
        job.done_called = True
        LAST_RESULT[job.kind] = job.runner.result
        if job.on_done:
            job.on_done(job.runner.result)


def wait(kind: str, timeout: float | None = None) -> RunResult | None:
    """Headless: block until the job of this kind ends, then run its callback."""
    job = _ACTIVE.get(kind)
    if job is None:
        return None
    deadline = None if timeout is None else time.monotonic() + timeout
    while not job.done_called:
        tick_all()
        if deadline is not None and time.monotonic() > deadline and not job.runner.finished:
            job.runner.cancel()
            deadline = None
        time.sleep(0.05)
    return job.runner.result


def cancel_all() -> None:
    for kind in list(_ACTIVE):
        cancel(kind)
