"""Backend operators: check, install, and the modal monitor that keeps a run going without blocking the UI."""

import os
import sys
from pathlib import Path

import bpy

from ..backend.client import registry
from ..backend.client.runner import JobRunner, addon_root, interpreter_problem, run_backend
from ..preferences import configured_python, get_prefs

_TIMER_STEP = 0.1

def backend_env_dir() -> Path:
    """Where Install Backend puts the venv: the extension's user folder (survives add-on updates)."""
    try:
        return Path(bpy.utils.extension_path_user(__package__.rsplit(".", 1)[0], path="backend_env", create=True))
    except (ValueError, AttributeError):  # not running as an extension (legacy add-on install)
        return Path(bpy.utils.user_resource("SCRIPTS", path="splat_physics_backend", create=True))


def venv_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirement_files(prefs) -> list[Path]:
    """The backend's pinned requirements, plus the Ray extra when the preferences ask for it."""
    folder = addon_root() / "requirements"
    return [folder / "backend.txt"] + ([folder / "ray.txt"] if prefs is not None and prefs.install_ray else [])


def summarize_doctor(report: dict) -> str:
    lines = [f"Backend {report.get('backend_version', '?')} on Python {report.get('python', '?')}"]
    dev = report.get("device", {})
    lines.append(f"Device: {dev.get('summary', '?')}")
    for name, ver in report.get("packages", {}).items():
        lines.append(f"  {name}: {ver or 'MISSING'}")
    for name, ver in report.get("optional", {}).items():
        lines.append(f"  {name}: {ver or 'not installed (optional: Include Ray, then Install Backend)'}")
    for m in report.get("models", []):
        lines.append(f"Model {m['kind']}: {'found' if m['ok'] else 'missing'} - {m['message']}")
    for p in report.get("problems", []):
        lines.append(f"Problem: {p}")
    return "\n".join(lines)


def remember_device(prefs, report: dict) -> None:
    """Keep what the doctor found: the panel's guidance and the estimation defaults under Auto use it."""
    dev = report.get("device", {})
    prefs.found_device = "cuda" if dev.get("cuda") else "cpu"
    prefs.found_gpu = f"{dev.get('gpu', 'GPU')}, {dev.get('gpu_memory_gb', '?')} GB" if dev.get("cuda") else ""
    prefs.found_models = ",".join(m["kind"] for m in report.get("models", []) if m.get("ok"))


class SPLAT_OT_check_backend(bpy.types.Operator):
    """Run the backend's doctor: devices, package versions, which video models are available"""

    bl_idname = "splat.check_backend"
    bl_label = "Check Backend"

    def execute(self, context):
        prefs = get_prefs(context)
        python = configured_python(context)
        # The doctor itself lists missing packages; it only needs a working Python with numpy to start.
        problem = interpreter_problem(python, modules=(("numpy", "numpy"),))
        if problem:
            prefs.doctor_report = problem
            self.report({"ERROR"}, problem)
            return {"CANCELLED"}
        args = ["doctor", "--json", "--svd-model", prefs.svd_model, "--modelscope-model", prefs.modelscope_model]
        result = run_backend(python, args, timeout=300)
        if not result.ok:
            prefs.doctor_report = result.message
            self.report({"ERROR"}, result.message)
            return {"CANCELLED"}
        report = next((e.data for e in result.events if e.kind == "result"), {})
        prefs.doctor_report = summarize_doctor(report)
        remember_device(prefs, report)
        self.report({"INFO"}, "Backend OK" if not report.get("problems") else "Backend works, with problems: see preferences")
        return {"FINISHED"}


class SPLAT_OT_install_backend(bpy.types.Operator):
    """Create a Python environment for the backend and install its pinned packages (several GB with CUDA torch)"""

    bl_idname = "splat.install_backend"
    bl_label = "Install Backend"

    def execute(self, context):
        prefs = get_prefs(context)
        env_dir = backend_env_dir()
        args = ["install", str(env_dir)]
        for requirements in requirement_files(prefs):
            args += ["--requirements", str(requirements)]
        # Blender's own interpreter runs the stdlib-only installer; it creates the venv and pip-installs into it.
        runner = JobRunner(sys.executable, args, log_path=env_dir.parent / "install.log")

        def done(result):
            if result.ok:
                prefs.backend_python = str(venv_python(env_dir))
                prefs.install_message = f"Installed into {env_dir}"
            else:
                prefs.install_message = result.message

        try:
            registry.start("install", runner, on_done=done, label="Install backend")
        except RuntimeError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        bpy.ops.splat.monitor_job("INVOKE_DEFAULT", kind="install")
        return {"FINISHED"}


class SPLAT_OT_monitor_job(bpy.types.Operator):
    """Follow a backend run: progress in the panel, ESC cancels"""

    bl_idname = "splat.monitor_job"
    bl_label = "Backend Job"

    kind: bpy.props.StringProperty()

    def invoke(self, context, event):
        if registry.active(self.kind) is None:
            return {"CANCELLED"}
        self._timer = context.window_manager.event_timer_add(_TIMER_STEP, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        # Headless (no event loop): block until the job ends.
        registry.wait(self.kind)
        return {"FINISHED"}

    def modal(self, context, event):
        if event.type == "ESC" and event.value == "PRESS":
            registry.cancel(self.kind)
        if event.type == "TIMER":
            registry.tick_all()
            _redraw(context)
            if registry.active(self.kind) is None:
                context.window_manager.event_timer_remove(self._timer)
                result = registry.LAST_RESULT.get(self.kind)
                if result is not None and not result.ok:
                    self.report({"WARNING" if result.state.value == "cancelled" else "ERROR"}, result.message)
                return {"FINISHED"}
        return {"PASS_THROUGH"}


class SPLAT_OT_cancel_job(bpy.types.Operator):
    """Stop the running backend job at its next safe point; earlier results are kept"""

    bl_idname = "splat.cancel_job"
    bl_label = "Cancel"

    kind: bpy.props.StringProperty()

    def execute(self, context):
        if not registry.cancel(self.kind):
            self.report({"INFO"}, "Nothing is running")
        return {"FINISHED"}


def _redraw(context):
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "PREFERENCES", "PROPERTIES"}:
                area.tag_redraw()


classes = (SPLAT_OT_check_backend, SPLAT_OT_install_backend, SPLAT_OT_monitor_job, SPLAT_OT_cancel_job)


_register_classes, _unregister_classes = bpy.utils.register_classes_factory(classes)
register = _register_classes


def unregister():
    registry.cancel_all()  # a backend must not outlive the add-on that follows it
    _unregister_classes()
