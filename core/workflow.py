"""The artist's long actions, shared by the operators and the tests.

    start_estimate(context, obj)  write an estimate job -> run it -> on success write materials
    start_simulate(context, obj)  write a simulate job  -> run it -> on success bake the frames
    start_preview(context, obj)   write a preview job   -> run it -> a video of the motion as estimated

Each returns the backend.client.registry ActiveJob at once; the UI follows it with the modal ``splat.monitor_job``
and headless callers use ``registry.wait(kind)``. Results touch the scene only after a run succeeded
and its outputs were checked, so a failed, cancelled or killed run leaves the previous materials
and bakes as they were. Every outcome is written to ``obj.splat_physics.last_message`` in the
artist's words, with the log path.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import bpy

from ..backend import protocol
from ..backend.client import registry, runner
from ..backend.client.runner import JobRunner, RunResult, RunState
from ..preferences import chosen_device, configured_python
from . import bake, estimate_setup, job_folder, materials, points, scene_to_job
from .errors import SetupError

ESTIMATE = "estimate"
SIMULATE = "simulate"
PREVIEW = "preview"
RUN_LOG = "run.log"


# ---------------------------------------------------------------------------- messages
def set_status(obj, level: str, message: str, log_path=None) -> None:
    """The panel's last message for ``obj`` (INFO, WARNING or ERROR)."""
    s = obj.splat_physics
    s.last_level = level
    s.last_message = message
    s.last_log = str(log_path) if log_path else ""


def backend_python(context=None, check: bool = True) -> str:
    """The configured backend interpreter, or a SetupError that says how to configure one.

    ``check`` starts it once to make sure it is a Python with the backend's core packages (runner.py),
    so a wrong choice is named before any job folder is written.
    """
    python = configured_python(context)
    if not python:
        raise SetupError("No backend is set up. Open Edit > Preferences > Add-ons > Splat Physics and click "
                         "Install Backend, or set Backend Python to an environment that has the backend packages")
    problem = runner.interpreter_problem(python) if check else None
    if problem:
        raise SetupError(problem)
    return python


def explain_failure(result: RunResult, device: str = "auto", what: str = "run") -> str:
    """A failed or cancelled run in the artist's words, ending with where the log is."""
    code = result.exit_code
    detail = next((e.message for e in reversed(result.events) if e.kind == "error" and e.message), "")
    missing = re.search(r"No module named '([\w.]+)'", detail)
    if result.state is RunState.CANCELLED:
        text = f"The {what} was cancelled. The previous results were kept"
    elif missing:
        text = (f"The backend Python lacks the package '{missing.group(1).split('.')[0]}' this {what} needs. "
                "Click Install Backend in the add-on preferences, or pick an environment that has the backend "
                "packages (requirements/backend.txt)")
    elif code is None:
        text = result.message.split(". Details:")[0]
    elif code == protocol.ExitCode.MISSING_RESOURCE:
        if device == "cuda" or any(w in detail.lower() for w in ("cuda", "gpu")):
            text = ("No CUDA GPU is available to the backend. Set Device to CPU in Preferences > Add-ons > "
                    "Splat Physics to run on the processor instead: it works, but is much slower "
                    "(a material estimate can take hours)")
        else:
            text = (f"Something the backend needs is missing: {detail or 'a model or file'}. Download the model "
                    "or point the add-on preferences at a local copy; Check Backend lists what it finds")
    elif code == protocol.ExitCode.DIVERGED:
        text = ("The simulation became unstable and blew up" + (f": {detail.rstrip('.')}" if detail else "")
                + ". Set Substep to 0 (automatic) or smaller, or try a finer grid, a softer material or weaker "
                "pokes and wind. The previous results were kept")
    elif code == protocol.ExitCode.BAD_INPUT:
        text = f"The backend rejected the job: {detail or 'invalid input'}"
    elif code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        fewer = ("lower Max particles or Resolution in the Estimate Materials panel" if what == ESTIMATE
                 else "use fewer particles (Fill Interior's Max fill particles) or a lower Grid resolution")
        text = (f"The backend process was killed ({name}) before it finished, perhaps because the computer ran "
                f"out of memory. To use less memory, {fewer}. The previous results were kept")
    elif code == protocol.ExitCode.INTERNAL:
        text = detail if detail.lower().startswith("internal error") else \
            f"The backend hit an internal error: {detail or 'see the log'}"
    else:
        text = f"The backend stopped: {protocol.EXIT_MEANINGS.get(code, f'exit code {code}')}"
    if result.log_path:
        text = text.rstrip(". ") + f". Log: {result.log_path}"
    return text


# ---------------------------------------------------------------------------- starting jobs
def _check_can_start(context, obj, kind: str) -> None:
    """What every run needs before its job folder is written: points, a backend, no run of this kind."""
    points.world_positions(obj)
    backend_python(context)
    running = registry.active(kind)
    if running is not None:
        raise SetupError(f"A {kind} run is already going on '{running.label}'; wait for it or cancel it first")


def prepare_job(context, obj, command: str, simulation: dict | None = None, **estimate_opts) -> Path:
    """Check the setup and write the job folder. Raises SetupError; changes nothing in the scene."""
    job, arrays = scene_to_job.build_job(context, obj, command, simulation=simulation, **estimate_opts)
    return job_folder.write_job_folder(job_folder.job_dir_for(obj, command), job, arrays)


def _start(kind: str, context, obj, job_dir: Path, apply_result) -> registry.ActiveJob:
    python = backend_python(context, check=False)  # checked by _check_can_start
    device = chosen_device(context)
    runner = JobRunner(python, ["run", str(job_dir)], log_path=job_dir / RUN_LOG,
                       cancel_file=job_dir / protocol.CANCEL_FILE)
    name = obj.name

    def on_done(result: RunResult) -> None:
        target = bpy.data.objects.get(name)
        if result.ok:
            try:
                if target is None:
                    raise SetupError(f"'{name}' was deleted or renamed while the {kind} ran; nothing was applied")
                result.message = apply_result(target, job_dir, result)
                set_status(target, "INFO", result.message, result.log_path)
                _undo_push(f"Splat {kind}")
                return
            except (SetupError, materials.MaterialsError, protocol.JobError, OSError, ValueError) as exc:
                # The run finished but its output cannot be used: report it as a failure, change nothing.
                result.state = RunState.FAILED
                result.message = (f"The {kind} finished but its result was not applied: {str(exc).rstrip('. ')}. "
                                  f"Log: {result.log_path}")
        else:
            result.message = explain_failure(result, device, kind)
        if target is not None:
            level = "WARNING" if result.state is RunState.CANCELLED else "ERROR"
            set_status(target, level, result.message, result.log_path)

    def on_event(event) -> None:
        # The backend's plan (projected bake time, substeps) shows as soon as it is known, before any frame.
        if event.kind == "stage" and event.stage == "plan":
            target = bpy.data.objects.get(name)
            if target is not None:
                set_status(target, "INFO", event.message, job_dir / RUN_LOG)

    try:
        active = registry.start(kind, runner, on_done=on_done, on_event=on_event, label=name)
    except RuntimeError as exc:
        raise SetupError(str(exc)) from None
    if not active.done_called:
        set_status(obj, "INFO", f"{kind.capitalize()} started", job_dir / RUN_LOG)
    return active


def _undo_push(message: str) -> None:
    """Results arrive from a timer, outside any operator: give them their own undo step in the UI."""
    if bpy.app.background:
        return
    try:
        bpy.ops.ed.undo_push(message=message)
    except RuntimeError:  # no window context (e.g. called from a script)
        pass


def start_estimate(context, obj, **estimate_opts) -> registry.ActiveJob:
    """Estimate the object's materials; on success they become its point attributes."""
    _check_can_start(context, obj, ESTIMATE)
    job, arrays = scene_to_job.build_job(context, obj, ESTIMATE, **estimate_opts)
    projection = estimate_setup.check_estimate_fits(context, obj, job["estimate"], job["simulation"])
    job_dir = job_folder.write_job_folder(job_folder.job_dir_for(obj, ESTIMATE), job, arrays)
    active = _start(ESTIMATE, context, obj, job_dir, _apply_estimate)
    if not active.done_called:
        set_status(obj, "INFO", f"Estimate started: {projection.text()}", job_dir / RUN_LOG)
    return active


def _apply_estimate(obj, job_dir: Path, result: RunResult) -> str:
    out = Path(job_dir) / protocol.OUT_DIR
    arrays = materials.load_materials_file(materials.materials_path(out), materials.point_count(obj))
    materials.apply_materials(obj, arrays)
    stats = materials.update_heatmap(obj)
    return ("Materials estimated: stiffness " + " / ".join(materials.format_pa(stats[k]) for k in ("p5", "p50", "p95"))
            + " (5% / median / 95%)")


def start_preview(context, obj, simulation: dict | None = None, **estimate_opts) -> registry.ActiveJob:
    """Render the motion with the current materials as the estimator's camera sees it (a video file).

    ``simulation`` overrides simulation settings, e.g. {"fps": 60} to film the clip at another rate than
    the scene's; the clip records its rate, and an estimate fitting it compares at those frame times."""
    _check_can_start(context, obj, PREVIEW)
    job_dir = prepare_job(context, obj, PREVIEW, simulation=simulation, **estimate_opts)
    return _start(PREVIEW, context, obj, job_dir, _preview_done)


def _preview_done(obj, job_dir: Path, result: RunResult) -> str:
    path = Path(job_dir) / protocol.OUT_DIR / protocol.PREVIEW_FILE
    if not path.is_file():
        raise SetupError(f"the preview video {path} is missing")
    return f"Preview rendered: {path}"


def bake_cache_dir(obj, target: str) -> str | None:
    """Absolute cache folder of a bake (None for shape keys, which live in the .blend).

    The default is //splat_cache/<object>/<target>, which needs a saved .blend; an absolute custom
    folder does not. A folder that holds someone else's files or cannot be written is refused here,
    before anything runs.
    """
    if target == "shape_keys":
        return None
    custom = obj.splat_physics.bake_dir.strip()
    if custom and not custom.startswith("//"):
        folder = custom
    elif not job_folder.blend_saved():
        raise SetupError("Save the .blend file first: bake caches are written next to it "
                         "(//splat_cache/...) so they travel with the file")
    else:
        folder = bpy.path.abspath(custom) if custom else bake.default_cache_dir(obj, target)
    try:
        return bake.check_cache_dir(folder)
    except bake.BakeError as exc:
        raise SetupError(str(exc)) from None


def start_simulate(context, obj, target: str | None = None, simulation: dict | None = None) -> registry.ActiveJob:
    """Simulate the scene's frame range, then bake the frames to ``target`` (default: the panel's choice).

    Running it again with unchanged settings resumes: the backend continues from its checkpoint and
    the bake reuses the frames it already wrote.
    """
    _check_can_start(context, obj, SIMULATE)
    target = target or obj.splat_physics.bake_target
    try:
        bake.writer_for(target)
    except bake.BakeError as exc:
        raise SetupError(str(exc)) from None
    cache_dir = bake_cache_dir(obj, target)  # fails early for an unsaved .blend
    job_dir = prepare_job(context, obj, SIMULATE, simulation=simulation)

    def apply(obj, job_dir, result):
        return _apply_bake(obj, job_dir, target, cache_dir)

    return _start(SIMULATE, context, obj, job_dir, apply)


def job_frames(job_dir) -> list:
    """(frame, lazily loaded frame file) pairs of this run's frame range; stale extra frames are ignored."""
    job = protocol.read_job(job_dir)
    first, count = job.simulation["frame_start"], job.simulation["n_frames"]
    frames = [(f, data) for f, data in bake.frames_from_dir(Path(job_dir) / protocol.OUT_DIR)
              if first <= f < first + count]
    if len(frames) != count:
        raise SetupError(f"the simulation wrote {len(frames)} of {count} frames")
    return frames


def _apply_bake(obj, job_dir: Path, target: str, cache_dir: str | None) -> str:
    info = bake.bake(obj, job_frames(job_dir), target, cache_dir)
    where = info.path or "the .blend (shape keys)"
    resumed = f", {info.frames_resumed} reused" if info.frames_resumed else ""
    return f"Baked {info.n_frames} frames to {where} ({human_bytes(info.bytes)}{resumed})"


def projected_bake_size(obj, target: str | None = None, n_frames: int | None = None) -> int:
    """Bytes the bake will take (on disk; for shape keys inside the .blend)."""
    scene = bpy.context.scene
    n_frames = n_frames or (scene.frame_end - scene.frame_start + 1)
    return int(bake.estimate_bake_size(target or obj.splat_physics.bake_target, materials.point_count(obj), n_frames))


def free_bake(obj) -> bool:
    """Remove the object's bake (readers and the cache files it wrote); the static look comes back."""
    had = bake.free_bake(obj)
    set_status(obj, "INFO", "Bake freed" if had else "There was no bake to free")
    return had


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"

