"""Write Jobs for a Farm: one job folder per selected object, a manifest, and the `batch` command that runs them.

The folders are the same ones the single Write Job and the interactive runs use
(//splat_jobs/<object>/<command>), so a farm run resumes a local one and the other way round.
The manifest sits beside them (//splat_jobs/farm_<command>.json) and names them relatively,
so the whole splat_jobs folder can be copied or mounted elsewhere.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import protocol
from ..backend.client.runner import addon_root
from .errors import SetupError
from .job_folder import job_dir_for
from .workflow import prepare_job

SHARED_STORAGE_NOTE = ("The job folders must be on storage every farm node sees at the same path; "
                       "on a Ray cluster add --address auto and run it on the head node")


@dataclass
class FarmJobs:
    manifest: Path
    folders: list[Path]
    command_line: str
    skipped: list[str] = field(default_factory=list)  # "<object>: why" for objects whose job could not be written


def farm_objects(context) -> list:
    """The selected splat objects (meshes set up for physics), in a stable order."""
    return sorted((o for o in context.selected_objects if o.type == "MESH" and o.splat_physics.enabled),
                  key=lambda o: o.name)


def manifest_path(obj, command: str) -> Path:
    return job_dir_for(obj, command).parent.parent / f"farm_{command}.json"


def write_farm_jobs(context, objects, command: str, python: str) -> FarmJobs:
    """Write each object's job folder, then the manifest of those written. Raises SetupError if none was."""
    written, skipped = [], []
    for obj in objects:
        try:
            written.append((prepare_job(context, obj, command), obj.name))
        except SetupError as exc:  # one object's bad setup must not cost the others their jobs
            skipped.append(f"{obj.name}: {str(exc).rstrip('.')}")
    if not written:
        raise SetupError("No job was written. " + ("; ".join(skipped) if skipped else
                                                   "Select objects set up for Splat Physics"))
    manifest = protocol.write_manifest(manifest_path(objects[0], command), written)
    return FarmJobs(manifest, [f for f, _ in written], batch_command(python, manifest), skipped)


def batch_command(python: str, manifest: Path) -> str:
    """The exact shell line that runs the manifest with this add-on's backend (PYTHONPATH finds `backend`)."""
    args = [python or "python", "-m", "backend", "batch", str(manifest)]
    root = str(addon_root())
    if os.name == "nt":
        return f'set "PYTHONPATH={root}" && ' + subprocess.list2cmdline(args)
    return f"PYTHONPATH={shlex.quote(root)} " + shlex.join(args)
