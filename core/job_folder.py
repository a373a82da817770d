"""Where a job folder goes, writing it, and the paths the backend reads from it.

A job folder is //splat_jobs/<object>/<command> next to the .blend (a temporary folder for an unsaved
file); ``write_job_folder`` writes job.json + scene.npz atomically and reads them back as the backend will.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np

from ..backend import protocol
from . import paths
from .errors import SetupError

JOBS_DIR = "splat_jobs"


def write_job_folder(job_dir, job: dict, arrays: dict) -> Path:
    """Write job.json + scene.npz atomically and check them as the backend will.

    An existing scene.npz with exactly these arrays is left alone, so a rerun does not rewrite a large
    file for nothing (the backend's resume fingerprint hashes array contents, not file bytes).
    """
    job_dir = Path(job_dir)
    try:
        paths.check_writable_folder(job_dir, "job folder")
    except paths.PathProblem as exc:
        raise SetupError(str(exc)) from None
    scene_path = job_dir / job.get("scene", protocol.SCENE_FILE)
    try:
        protocol.write_job(job_dir, job, None if _same_arrays(scene_path, arrays) else arrays)
    except OSError as exc:  # e.g. the disk filled up while writing
        raise SetupError(f"Cannot write the job folder {job_dir}: {exc.strerror or exc}") from None
    try:
        protocol.read_job(job_dir)
    except protocol.BadJob as exc:
        raise SetupError(f"The job could not be written correctly: {exc.message}") from None
    return job_dir


def _same_arrays(path: Path, arrays: dict) -> bool:
    if not path.is_file():
        return False
    try:
        old = protocol.load_npz(path)
    except protocol.BadJob:
        return False
    return old.keys() == arrays.keys() and all(
        old[k].dtype == np.asarray(arrays[k]).dtype and np.array_equal(old[k], arrays[k]) for k in arrays)


def blend_saved() -> bool:
    return bool(bpy.data.filepath)


def job_dir_for(obj, command: str) -> Path:
    """//splat_jobs/<object>/<command> next to the .blend, or a temp folder for an unsaved file."""
    if blend_saved():
        root = Path(bpy.path.abspath(f"//{JOBS_DIR}"))
    else:
        root = Path(tempfile.gettempdir()) / JOBS_DIR / f"unsaved-{os.getpid()}"
    return root / paths.safe_folder_name(obj.name) / command


def absolute_input(path: str) -> str:
    """A '//' path (relative to the .blend, as Blender's file browser writes it) made absolute for the backend,
    which runs in the job folder; other paths pass unchanged (absolute, or relative to the job folder)."""
    path = str(path or "").strip()
    if not path.startswith("//"):
        return path
    if not blend_saved():
        raise SetupError(f"'{path}' is relative to the .blend file ('//'), which is not saved yet. Save the "
                         ".blend first, or choose the video with an absolute path")
    return os.path.normpath(bpy.path.abspath(path))


def check_prior_needs(job: dict, job_dir) -> None:
    """What the estimate's prior needs from the artist (a prompt, a video, a model), said before anything is
    written: the backend's own check (protocol), with inputs relative to the job folder as it reads them."""
    try:
        protocol.check_prior_needs(job["estimate"], Path(job_dir))
    except (protocol.SettingError, protocol.JobError) as exc:
        raise SetupError(f"Estimate Materials: {exc}") from None
