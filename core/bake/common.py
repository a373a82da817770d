"""What every bake writer shares: frame sources, validation, world->local, the staging folder, the record.

A bake never touches the previous one until it has finished: frames go into a hidden sibling folder
``.<target>.partial`` next to the final cache folder, each frame written atomically and followed by a
small done marker (``_splat_progress/<frame>.done`` holding a fingerprint of the frame's source).
A rerun with the same object and frame range resumes: frames whose marker matches are skipped. At the
end the staging folder is swapped in (rename) and the old cache is deleted.

Frames come as (frame_number, mapping) pairs; the mapping has the FRAME_ARRAYS of backend.protocol
(positions (N,3) world, rotations (N,4) wxyz, scales (N,3) linear, time ()). ``frames_from_dir`` gives
lazily loaded frames of a job's out/frames folder, so skipped frames are never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bpy
import numpy as np

from ...backend import protocol
from .. import splats as splat_data

TARGETS = ("gn_cache", "ply_sequence", "pc2", "shape_keys")
BAKE_PROP = "splat_bake"  # object custom property: JSON record of the current bake
MANIFEST = "splat_bake.json"  # marks a cache folder as ours (free_bake deletes only such folders)
PROGRESS_DIR = "_splat_progress"
CACHE_ROOT = "splat_cache"
FORMAT_VERSION = 1


class BakeError(ValueError):
    """A bake cannot run or its input is wrong; the message says what to fix."""


@dataclass
class BakeInfo:
    target: str
    cache_dir: str  # absolute folder ('' for shape keys)
    path: str  # as stored in the .blend: '//'-relative when the .blend is saved
    frame_start: int
    frame_end: int
    n_points: int
    n_frames: int
    frames_written: int = 0
    frames_resumed: int = 0
    bytes: int = 0
    seconds: float = 0.0
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ frames
class FrameFile(Mapping):
    """One out/frames/frame_XXXXXX.npz, loaded on first access (skipped frames are never read)."""

    def __init__(self, path):
        self.path = Path(path)
        self._arrays = None

    def _load(self) -> dict:
        if self._arrays is None:
            try:
                self._arrays = protocol.load_npz(self.path)
            except protocol.JobError as exc:
                raise BakeError(exc.message) from None
        return self._arrays

    def __getitem__(self, key):
        return self._load()[key]

    def __contains__(self, key):
        return key in self._load()

    def release(self) -> None:
        """Forget the loaded arrays (writers call this after each frame to keep memory flat)."""
        self._arrays = None

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())

    @property
    def fingerprint(self) -> str:
        st = self.path.stat()
        return f"file:{st.st_size}:{st.st_mtime_ns}"


def frames_from_dir(folder) -> list:
    """(frame_number, FrameFile) pairs of a job's out folder (or its frames/ folder), in frame order."""
    folder = Path(folder)
    files = protocol.iter_frame_files(folder)
    if not files and folder.name == protocol.FRAMES_DIR:
        files = protocol.iter_frame_files(folder.parent)
    out = []
    for path in files:
        stem = path.stem.split("_", 1)[-1]
        if stem.lstrip("-").isdigit():
            out.append((int(stem), FrameFile(path)))
    if not out:
        raise BakeError(f"no simulated frames (frame_XXXXXX.npz) found in {folder}")
    return out


def collect_frames(frames) -> list:
    """Materialise (frame, mapping) pairs; frame numbers must be integers in increasing order."""
    out = []
    for item in frames:
        try:
            number, data = item
        except (TypeError, ValueError):
            raise BakeError("frames must be (frame_number, arrays) pairs") from None
        if isinstance(number, (float, np.floating)) and float(number).is_integer():
            number = int(number)
        if not isinstance(number, (int, np.integer)) or isinstance(number, bool):
            raise BakeError(f"frame number {number!r} is not an integer")
        if out and number <= out[-1][0]:
            raise BakeError(f"frame numbers must increase: {number} comes after {out[-1][0]}")
        out.append((int(number), data))
    if not out:
        raise BakeError("there are no frames to bake")
    return out


def fingerprint(data) -> str:
    """Identity of a frame's source: file size + mtime for frame files, a content hash otherwise."""
    fp = getattr(data, "fingerprint", None)
    if isinstance(fp, str):
        return fp
    h = hashlib.blake2b(digest_size=16)
    for key in sorted(data):
        arr = np.ascontiguousarray(np.asarray(data[key]))
        h.update(key.encode())
        h.update(str(arr.dtype).encode() + str(arr.shape).encode())
        h.update(arr.data)
    return "data:" + h.hexdigest()


def frame_arrays(data, n: int, keys, frame: int) -> dict:
    """The arrays a writer needs, as float32, checked for presence, shape and finiteness."""
    shapes = {"positions": (n, 3), "rotations": (n, 4), "scales": (n, 3)}
    out = {}
    for key in keys:
        if key not in data:
            raise BakeError(f"frame {frame}: array '{key}' is missing")
        arr = np.asarray(data[key])
        if arr.shape != shapes[key]:
            hint = " (the object's point count changed since the simulation?)" if arr.ndim == 2 else ""
            raise BakeError(f"frame {frame}: '{key}' has shape {arr.shape}, expected {shapes[key]}{hint}")
        if arr.dtype.kind not in "fiu":
            raise BakeError(f"frame {frame}: '{key}' has dtype {arr.dtype}, expected floats")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise BakeError(f"frame {frame}: '{key}' has NaN or infinite values (did the simulation diverge?)")
        out[key] = arr
    release = getattr(data, "release", None)
    if callable(release):
        release()
    return out


def check_first_frame(frames: list, n: int, keys) -> None:
    """Validate the first frame before anything is written, so plain mistakes leave no staging folder."""
    frame, data = frames[0]
    frame_arrays(data, n, keys, frame)


def point_count(obj) -> int:
    if obj is None or obj.type != "MESH":
        raise BakeError(f"'{getattr(obj, 'name', obj)}' is not a mesh object")
    n = len(obj.data.vertices)
    if n == 0:
        raise BakeError(f"'{obj.name}' has no points to bake")
    return n


def world_to_local(matrix_world, arrays: dict) -> dict:
    """Frame arrays (world space) in the object's local space, so the object's transform still applies."""
    mw = np.array(matrix_world, dtype=np.float64)
    if np.allclose(mw, np.eye(4)):
        return arrays
    inv = np.linalg.inv(mw)
    out = dict(arrays)
    out["positions"] = (arrays["positions"].astype(np.float64) @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    if "rotations" in arrays and "scales" in arrays:
        out["rotations"], out["scales"] = splat_data.transform_gaussians(inv[:3, :3], arrays["rotations"],
                                                                         arrays["scales"])
    return out


# ------------------------------------------------------------------------------------------ paths
def blend_relative(path) -> str:
    """'//'-relative path when the .blend is saved (render farms resolve it), else the absolute path."""
    path = os.path.abspath(os.fspath(path))
    if bpy.data.filepath:
        try:
            return bpy.path.relpath(path)
        except ValueError:  # another drive on Windows
            pass
    return path


def default_cache_dir(obj, target: str) -> str:
    """//splat_cache/<object>/<target>, absolute. The .blend must be saved (caches live next to it)."""
    if target not in TARGETS:
        raise BakeError(f"unknown bake target {target!r}; use one of {', '.join(TARGETS)}")
    if not bpy.data.filepath:
        raise BakeError("save the .blend file first: bake caches are stored next to it")
    return bpy.path.abspath(f"//{CACHE_ROOT}/{bpy.path.clean_name(obj.name)}/{target}")


def folder_size(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def remove_cache_dir(path) -> bool:
    """Delete a cache folder, but only one that a bake wrote (it holds our manifest)."""
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        shutil.rmtree(path, ignore_errors=True)
        return True
    return False


# ------------------------------------------------------------------------------------------ staging
class Stage:
    """The hidden sibling folder a bake writes into; swapped in by commit()."""

    def __init__(self, cache_dir, manifest: dict, resume: bool = True):
        self.final = Path(os.path.abspath(os.fspath(cache_dir)))
        if self.final.exists() and not self.final.is_dir():
            raise BakeError(f"cache path {self.final} exists and is not a folder")
        self.dir = self.final.parent / f".{self.final.name}.partial"
        self.manifest = dict(manifest, format_version=FORMAT_VERSION)
        self.resumed = False
        old = self._read_manifest()
        if resume and old == self.manifest:
            self.resumed = True
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            (self.dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BakeError(f"cannot create the cache folder {self.dir}: {exc.strerror or exc}") from None
        protocol.atomic_write_json(self.dir / MANIFEST, self.manifest)

    def _read_manifest(self):
        try:
            return json.loads((self.dir / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _marker(self, frame: int) -> Path:
        return self.dir / PROGRESS_DIR / f"{frame}.done"

    def done(self, frame: int, fp: str) -> bool:
        try:
            return self._marker(frame).read_text(encoding="utf-8") == fp
        except OSError:
            return False

    def mark(self, frame: int, fp: str) -> None:
        protocol.atomic_write_text(self._marker(frame), fp)

    def commit(self) -> Path:
        """Swap the finished staging folder in place of the final one; the old cache is deleted after."""
        shutil.rmtree(self.dir / PROGRESS_DIR, ignore_errors=True)
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}-{int(time.time() * 1000)}"
            os.replace(self.final, old)
        os.replace(self.dir, self.final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.final


def manifest_for(target: str, obj, n: int, frames: list, **extra) -> dict:
    """What must match for a staging folder to be resumed."""
    mw = [round(float(v), 9) for row in obj.matrix_world for v in row]
    return {"target": target, "object": obj.name, "n_points": n, "matrix_world": mw,
            "frames": [frames[0][0], frames[-1][0], len(frames)], **extra}


# ------------------------------------------------------------------------------------------ record
def bake_record(obj) -> dict | None:
    raw = obj.get(BAKE_PROP) if obj is not None else None
    if not raw:
        return None
    try:
        rec = json.loads(raw)
        return rec if isinstance(rec, dict) else None
    except (TypeError, ValueError):
        return None


def set_bake_record(obj, info: BakeInfo) -> None:
    obj[BAKE_PROP] = json.dumps({"target": info.target, "path": info.path,
                                 "dir": blend_relative(info.cache_dir) if info.cache_dir else "",
                                 "frame_start": info.frame_start, "frame_end": info.frame_end,
                                 "n_points": info.n_points})


def clear_bake_record(obj) -> None:
    if BAKE_PROP in obj:
        del obj[BAKE_PROP]


def report_progress(progress, done: int, total: int, frame: int) -> None:
    """Call the optional progress callback; it may raise (e.g. to cancel) and the bake stops there."""
    if progress is not None:
        progress(done, total, frame)


# ------------------------------------------------------------------------------------------ finishing
def detach_all(obj) -> None:
    """Remove every bake reader (modifiers, committed shape keys) from the object; files stay."""
    from . import gn_cache, pc2, ply_sequence, shape_keys

    for module in (gn_cache, ply_sequence, pc2, shape_keys):
        module.detach(obj)


def record_dir(record: dict | None) -> str:
    """Absolute cache folder of a bake record ('' for none or shape keys)."""
    if not record or not record.get("dir"):
        return ""
    return os.path.abspath(bpy.path.abspath(record["dir"]))


def finish_bake(obj, info: BakeInfo, attach) -> None:
    """After a successful write: drop the previous bake (its readers and, if elsewhere, its files),
    hook up the new one and record it on the object."""
    previous = bake_record(obj)
    detach_all(obj)
    old_dir = record_dir(previous)
    if old_dir and os.path.normcase(old_dir) != os.path.normcase(os.path.abspath(info.cache_dir or "")):
        remove_cache_dir(old_dir)
    attach()
    set_bake_record(obj, info)
