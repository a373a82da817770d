"""``python -m backend install <env_dir> --requirements FILE [--requirements EXTRA ...]``: create the backend environment.

Extras (such as requirements/ray.txt for ``batch`` on Ray) are further requirement files installed in
the same pip run, so the resolver sees every pin at once.

Standard library only: it runs under Blender's own Python (which has no torch) for the add-on's
Install Backend button, and reports progress as events like any other job.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

from ..jobctl import CancelToken, Reporter
from ..protocol import ExitCode


def env_python(env_dir: Path) -> Path:
    return env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirement_count(files: list[Path]) -> int:
    lines = [ln.split("#")[0].strip() for f in files for ln in f.read_text(encoding="utf-8").splitlines()]
    return max(1, sum(1 for ln in lines if ln and not ln.startswith("-")))


def cmd_install(env_dir: Path, requirements: list[Path]) -> int:
    reporter = Reporter()
    token = CancelToken()
    token.install_signal_handlers()
    missing = [str(f) for f in requirements if not f.is_file()]
    if missing or not requirements:
        reporter.emit("error", message=f"requirements file not found: {', '.join(missing) or '(none given)'}")
        return ExitCode.BAD_INPUT
    if sys.version_info[:2] != (3, 11):
        reporter.emit("error", message=f"the backend needs Python 3.11; this is {sys.version.split()[0]}")
        return ExitCode.MISSING_RESOURCE
    python = env_python(env_dir)
    if not python.exists():
        reporter.stage("venv", f"Creating the environment in {env_dir}")
        venv.EnvBuilder(with_pip=True, clear=False).create(env_dir)
    total = requirement_count(requirements) * 3  # rough: a few packages pulled in per requirement
    reporter.stage("pip", "Installing packages (torch with CUDA is several GB)")
    cmd = [str(python), "-m", "pip", "install", "--progress-bar", "off"]
    for f in requirements:
        cmd += ["-r", str(f)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    step = 0
    for raw in iter(proc.stdout.readline, b""):
        line = raw.decode("utf-8", errors="replace").rstrip()
        print(line, file=sys.stderr)
        m = re.match(r"(Collecting|Downloading|Installing collected packages)\s*(.*)", line)
        if m:
            step = min(total - 1, step + 1)
            reporter.progress("pip", step, total, message=f"{m.group(1)} {m.group(2)[:60]}")
        if token.requested:
            proc.terminate()
            proc.wait()
            reporter.emit("error", message="installation cancelled; run Install Backend again to continue")
            return ExitCode.CANCELLED
    code = proc.wait()
    if code != 0:
        reporter.emit("error", message=f"pip failed (exit {code}); the log shows which package")
        return ExitCode.MISSING_RESOURCE
    reporter.progress("pip", total, total, message="installed")
    reporter.emit("result", stage="install", message="backend installed", data={"python": str(python)})
    return ExitCode.OK
