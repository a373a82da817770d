"""The artist's files next to a bake or job, and a digest of a folder tree to prove they were not touched."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

ARTIST_FILES = {"holiday.jpg": b"\xff\xd8\xff\xe0 not really a jpeg, but the artist's",
                "client/brief.txt": b"Make the tulip sway. Do not lose this file.\n"}


def plant_artist_files(folder) -> dict:
    """Write ARTIST_FILES into ``folder``; returns {absolute path: bytes}."""
    out = {}
    for rel, data in ARTIST_FILES.items():
        path = Path(folder) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        out[str(path)] = data
    return out


def tree_digest(root, skip=()) -> dict:
    """{relative path: sha256 of the bytes (files) or 'dir'} of everything under ``root``.

    ``skip`` names top-level entries to leave out (e.g. the product's own cache folder inside it).
    """
    root = Path(root)
    out = {}
    if not root.exists():
        return out
    for base, dirs, files in os.walk(root):
        rel_base = os.path.relpath(base, root)
        if rel_base == ".":
            dirs[:] = [d for d in dirs if d not in skip]
            files = [f for f in files if f not in skip]
        for d in dirs:
            out[os.path.normpath(os.path.join(rel_base, d))] = "dir"
        for f in files:
            out[os.path.normpath(os.path.join(rel_base, f))] = hashlib.sha256(
                Path(base, f).read_bytes()).hexdigest()
    return out
