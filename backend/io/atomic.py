"""Atomic file replacement: write to a hidden temp file in the same folder, then rename.

A killed process leaves either the old file or the new one, never half a file. The temp
file sits in the target's folder because os.replace is only atomic within one file system.
Standard library only, so the Blender side can use it too.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Iterator

__all__ = ["atomic_path", "TEMP_MARKER"]

TEMP_MARKER = ".tmp-"  # in every temp name, so leftovers of a killed process can be found and removed


def _temp_name(path: str) -> str:
    folder, base = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(base)
    # Keep the extension: writers such as ffmpeg pick the container from it. The leading
    # dot hides the temp file from folder scans (e.g. PNG frame sequences).
    return os.path.join(folder, f".{stem}{TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")


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
