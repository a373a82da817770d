"""Bake folders the add-on owns: a marker file lists our files, and nothing else in the folder is touched.

A bake folder is ours when it holds MARKER. A bake creates the folder (or adopts an empty one) and
writes the marker before anything else; a folder with other content and no marker is refused, untouched.
The marker lists, per bake target, the files that target's last bake wrote (paths relative to the
folder). A file is only ever replaced or deleted when it is listed there AND matches the writer's exact
layout (``LAYOUT`` of each writer module, e.g. ``meta/00001_00000.json``), so an edited or crafted
marker cannot point a bake at the artist's files: holiday.jpg or client/brief.txt next to a cache stay.

Bakes are written into ``STAGING/<target>/`` inside the folder and moved into place file by file once
complete (``commit``). Before the move the marker lists the old and the new files together, so an
interruption at any point leaves every file of ours accounted for. Several targets can share a folder
(their layouts do not overlap); baking one leaves the others' files alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ...backend import protocol
from .. import paths

MARKER = "splat_bake.json"
STAGING = ".splat_staging"
PRODUCT = "splat_physics"
FORMAT_VERSION = 2  # 1: the whole folder was one bake (its manifest named the target)


class BakeError(ValueError):
    """A bake cannot run or its input is wrong; the message says what to fix (re-exported by common)."""


def read_marker(folder) -> dict | None:
    try:
        data = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _entries(marker: dict | None) -> dict:
    """target -> {"files": [...] or None}; None (format 1) means every file matching the layout."""
    if marker is None:
        return {}
    targets = marker.get("targets")
    if isinstance(targets, dict):
        return {t: e for t, e in targets.items() if isinstance(t, str) and isinstance(e, dict)}
    legacy = marker.get("target")
    return {legacy: {"files": None}} if isinstance(legacy, str) else {}


def _write_marker(folder: Path, entries: dict, created: int) -> None:
    """``created``: how many folder levels the first bake made (the folder, its parent...), removed when freed."""
    protocol.atomic_write_json(folder / MARKER, {"product": PRODUCT, "format_version": FORMAT_VERSION,
                                                 "created_levels": created, "targets": entries})


def _created(marker: dict) -> int:
    levels = marker.get("created_levels", 0)
    return levels if isinstance(levels, int) and 0 <= levels < 64 else 0


def is_owned(folder) -> bool:
    return read_marker(folder) is not None


def check_folder(folder) -> Path:
    """The absolute bake folder, or BakeError when it is a file, someone else's or read-only."""
    folder = Path(os.path.abspath(os.fspath(folder)))
    if folder.exists() and not folder.is_dir():
        raise BakeError(f"The bake folder {folder} is a file, not a folder")
    try:
        foreign = folder.is_dir() and not is_owned(folder) and any(folder.iterdir())
    except OSError as exc:
        raise BakeError(f"The bake folder {folder} cannot be read: {exc.strerror or exc}") from None
    if foreign:
        raise BakeError(f"The bake folder {folder} already holds files that Splat Physics did not write. "
                          "Choose an empty or new folder for the bake; nothing in this one was changed")
    try:
        paths.check_writable_folder(folder, "bake folder")
    except paths.PathProblem as exc:
        raise BakeError(str(exc)) from None
    return folder


def claim(folder) -> Path:
    """Make ``folder`` ours (create it, or mark an empty one); refuse one that holds others' files."""
    folder = check_folder(folder)
    if not is_owned(folder):
        created, missing = 0, folder
        while not missing.exists() and missing != missing.parent:
            created, missing = created + 1, missing.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_marker(folder, {}, created)
        except OSError as exc:
            raise BakeError(f"Cannot create the bake folder {folder}: {exc.strerror or exc}") from None
    return folder


def _inside(folder: Path, path: Path) -> bool:
    real, root = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, root]) == root


def _walk(root: Path) -> list[str]:
    """Relative posix paths of the regular files under ``root`` (symlinks are not followed)."""
    out = []
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(base, d))]
        for name in files:
            full = os.path.join(base, name)
            if os.path.isfile(full) and not os.path.islink(full):
                out.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return out


def owned_files(folder, target: str, layout: re.Pattern) -> list[str]:
    """Files of ``target``'s bake in ``folder`` that we may replace or delete (see the module docstring)."""
    folder = Path(folder)
    entry = _entries(read_marker(folder)).get(target)
    if entry is None:
        return []
    listed = entry.get("files")
    candidates = _walk(folder) if listed is None else [r for r in listed if isinstance(r, str)]
    out = set()
    for rel in candidates:
        path = folder / rel
        if layout.fullmatch(rel) and path.is_file() and not path.is_symlink() and _inside(folder, path):
            out.add(rel)
    return sorted(out)


def _prune(folder: Path, rels) -> None:
    """Remove folders that deleting or moving our files left empty (never the artist's non-empty ones)."""
    dirs = {folder / STAGING}
    for rel in rels:
        parent = (folder / rel).parent
        while parent != folder and _inside(folder, parent):
            dirs.add(parent)
            parent = parent.parent
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:  # not empty (someone else's files) or already gone
            pass


def commit(folder, target: str, staged: Path, layout: re.Pattern) -> list[str]:
    """Move a finished bake from ``staged`` into ``folder``: our old files of this target go, nothing else."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        raise BakeError(f"The bake folder {folder} lost its {MARKER} while baking; nothing was replaced")
    entries = _entries(marker)
    created = _created(marker)
    new = sorted(rel for rel in _walk(staged) if layout.fullmatch(rel))
    old = owned_files(folder, target, layout)
    clash = [rel for rel in new if (folder / rel).exists() and rel not in old]
    if clash:
        raise BakeError(f"The bake folder {folder} has a file '{clash[0]}' that Splat Physics did not write; "
                          "move it away and bake again (nothing was replaced)")
    entries[target] = {"files": sorted(set(old) | set(new))}
    _write_marker(folder, entries, created)  # old and new are both ours while files move
    for rel in new:
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged / rel, dest)
    stale = sorted(set(old) - set(new))
    for rel in stale:
        (folder / rel).unlink(missing_ok=True)
    entries[target] = {"files": new}
    _write_marker(folder, entries, created)
    shutil.rmtree(staged, ignore_errors=True)  # the staging folder is ours by name inside our folder
    _prune(folder, stale)
    return new


def release(folder, target: str, layout: re.Pattern) -> int:
    """Delete ``target``'s bake from ``folder``: its files and staging, then the marker (and the folder,
    if we created it) once no bake of ours is left. Files we did not write stay. Returns files deleted."""
    folder = Path(folder)
    marker = read_marker(folder)
    if marker is None:
        return 0
    files = owned_files(folder, target, layout)
    for rel in files:
        (folder / rel).unlink(missing_ok=True)
    shutil.rmtree(folder / STAGING / target, ignore_errors=True)
    entries = _entries(marker)
    entries.pop(target, None)
    created = _created(marker)
    if entries:
        _write_marker(folder, entries, created)
    else:
        (folder / MARKER).unlink(missing_ok=True)
    _prune(folder, files)
    level = folder
    for _ in range(created if not entries else 0):  # the folders the first bake made, if now empty
        try:
            level.rmdir()
        except OSError:  # the artist put files in it: they stay, and so does the folder
            break
        level = level.parent
    return len(files)
