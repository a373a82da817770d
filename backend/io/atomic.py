"""Atomic file replacement: write to a hidden temp file in the same folder, then rename.

A killed process leaves either the old file or the new one, never half a file. The temp
file sits in the target's folder because os.replace is only atomic within one file system.
Standard library only, so the Blender side can use it too.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from typing import Iterator

__all__ = ["atomic_path", "TEMP_MARKER", "is_own_temp", "remove_own_temps"]

TEMP_MARKER = ".splatphysics-tmp-"  # in every temp name, so leftovers of a killed process can be found and removed
# The whole name of one of our temp files: .<stem>.splatphysics-tmp-<pid>-<8 hex>[.ext]. Cleanup deletes
# nothing else, so a user's own ".notes.tmp-1" next to our files is safe.
_OWN_TEMP = re.compile(r"\..*" + re.escape(TEMP_MARKER) + r"\d+-[0-9a-f]{8}(\.[A-Za-z0-9]+)?")


def _temp_name(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    # Keep the extension: writers such as ffmpeg pick the container from it. The leading
    # dot hides the temp file from folder scans (e.g. PNG frame sequences).
    return os.path.join(folder, f".{stem}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")


def is_own_temp(name: str) -> bool:
    """Is this file name one that atomic_path makes?"""
    return _OWN_TEMP.fullmatch(name) is not None


def remove_own_temps(folder: str | os.PathLike) -> int:
    """Delete leftovers of atomic writes interrupted by a kill, in ``folder`` only (not below it, and never
    through a symbolic link). Returns how many were removed."""
    count = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if is_own_temp(entry.name) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.remove(entry.path)
                count += 1
    return count


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed.

    The caller creates the file at the yielded path (with any writer it likes). The folder of
    `path` must exist.
    """
    path = os.fspath(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise FileNotFoundError(f"nothing was written to the temporary file for {path}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
