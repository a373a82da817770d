"""Folder names and paths the add-on makes: safe names from object names, writability, '//' rebasing.

Standard library only (no bpy), so the rules are tested headless and the backend side could share them.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata

MAX_NAME = 64  # characters of a folder name made from an object name
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Device names Windows refuses as file or folder names, with or without an extension.
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


class PathProblem(ValueError):
    """A folder cannot be used; the message names it and says why."""


def safe_folder_name(name: str, fallback: str = "object") -> str:
    """A folder name for ``name`` (an object name) that stays one plain folder on every system.

    ASCII letters, digits, '.', '_' and '-' only; no leading dot (no '.', '..' or hidden folders), no
    Windows device name (CON, NUL, COM1...), at most MAX_NAME characters. Any name that had to change
    gets a short hash of the original, so two objects whose names clean up alike ('a/b', 'a_b', two
    emoji) still get different folders. A name that is already safe is kept as it is.
    """
    name = str(name)
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    clean = _UNSAFE.sub("_", ascii_name).strip("._-")
    stem, dot, rest = clean.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:  # 'CON' and 'con.txt' alike
        clean = f"{stem}_{dot}{rest}"
    if clean == name and len(clean) <= MAX_NAME:
        return clean
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{clean[:MAX_NAME - 9].rstrip('._-') or fallback}-{digest}"


def nearest_existing(path) -> str:
    """``path`` itself or its closest existing ancestor."""
    path = os.path.abspath(os.fspath(path))
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_writable_folder(path, what: str) -> None:
    """Raise PathProblem unless ``path`` is (or can be created as) a folder we may write into.

    Checked before anything is written, so a read-only disk or folder is said plainly instead of
    failing half-way. ``what`` names the folder for the artist ("bake folder", "job folder").
    """
    path = os.path.abspath(os.fspath(path))
    existing = nearest_existing(path)
    if not os.path.isdir(existing):
        raise PathProblem(f"The {what} {path} cannot be created: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} cannot be written, so the folder cannot be created)"
        raise PathProblem(f"The {what} {path} is read-only{where}. Choose a folder you can write to, "
                          "or change its permissions")


def rebase_relative(value: str, old_dir: str, new_dir: str) -> str:
    """A '//'-relative path written for a .blend in ``old_dir``, rewritten for one in ``new_dir``.

    It names the same place on disk, as Blender's own Save As does for image paths. Absolute paths and
    empty strings are returned unchanged; a trailing separator is kept (folder inputs need it).
    """
    if not isinstance(value, str) or not value.startswith("//"):
        return value
    rest = value[2:]
    trailing = rest.endswith(("/", "\\"))
    target = os.path.normpath(os.path.join(old_dir, rest))
    try:
        rel = os.path.relpath(target, new_dir)
    except ValueError:  # another drive on Windows: only an absolute path can reach it
        return target + (os.sep if trailing else "")
    rel = rel.replace(os.sep, "/")
    return "//" + rel + ("/" if trailing and not rel.endswith("/") else "")
