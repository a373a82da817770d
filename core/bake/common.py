"""What every bake writer shares: frame sources, validation, world->local, the staging folder, the record.

A bake writes only into a folder it owns (see folder.py: a marker file lists the files each target
wrote; a folder with someone else's files is refused) and never touches the previous bake until it
has finished: frames go into ``.splat_staging/<target>/`` inside the bake folder, each frame written
atomically and followed by a small done marker (``_splat_progress/<frame>.done`` holding a fingerprint
of the frame's source). A rerun with the same object and frame range resumes: frames whose marker
matches are skipped. At the end the staged files replace this target's previous files, and only those.

Frames come as (frame_number, mapping) pairs; the mapping has the FRAME_ARRAYS of backend.protocol
(positions (N,3) world, rotations (N,4) wxyz, scales (N,3) linear, time ()). ``frames_from_dir`` gives
lazily loaded frames of a job's out/frames folder, so skipped frames are never read.

Paths stored in the .blend (the record, the readers) are '//'-relative when the file is saved and are
resolved with bpy.path.abspath when used; relocate.py keeps them pointing at the same files on Save As.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import bpy
import numpy as np

from ...backend import protocol
from .. import paths
from .. import splat_objects
from . import folder
from .folder import BakeError

BAKE_PROP = "splat_bake"  # object custom property: JSON record of the current bake
STAGE_FILE = "stage.json"  # in a staging folder: what must match for a rerun to resume it
PROGRESS_DIR = "_splat_progress"
CACHE_ROOT = "splat_cache"


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
        out["rotations"], out["scales"] = splat_objects.transform_gaussians(inv[:3, :3], arrays["rotations"],
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
    """//splat_cache/<object>/<target> (a known target), absolute. The .blend must be saved (caches live next to
    it)."""
    if not bpy.data.filepath:
        raise BakeError("save the .blend file first: bake caches are stored next to it")
    return bpy.path.abspath(f"//{CACHE_ROOT}/{paths.safe_folder_name(obj.name)}/{target}")


def files_size(root, rels) -> int:
    total = 0
    for rel in rels:
        try:
            total += os.path.getsize(os.path.join(root, rel))
        except OSError:
            pass
    return total


def remove_legacy_staging(cache_dir) -> None:
    """An interrupted format-1 bake left a hidden sibling '.<name>.partial' holding our marker: delete it."""
    cache_dir = Path(cache_dir)
    staging = cache_dir.parent / f".{cache_dir.name}.partial"
    if staging.is_dir() and not staging.is_symlink() and (staging / folder.MARKER).is_file():
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------ staging
class Stage:
    """A bake being written: ``.splat_staging/<target>/`` inside the (owned) bake folder; commit() moves it in.

    ``layout`` is the writer's pattern of the files it makes (relative paths); only such files are
    moved in, and only this target's earlier files that match it are replaced (folder.py).
    """

    def __init__(self, cache_dir, manifest: dict, layout: re.Pattern, resume: bool = True):
        self.final = folder.claim(cache_dir)
        self.target = manifest["target"]
        self.layout = layout
        self.dir = self.final / folder.STAGING / self.target
        self.manifest = dict(manifest)
        self.files: list[str] = []
        self.resumed = False
        if resume and self._read_manifest() == self.manifest:
            self.resumed = True
        else:
            shutil.rmtree(self.dir, ignore_errors=True)
        try:
            (self.dir / PROGRESS_DIR).mkdir(parents=True, exist_ok=True)
            protocol.atomic_write_json(self.dir / STAGE_FILE, self.manifest)
        except OSError as exc:
            raise BakeError(f"cannot write into the bake folder {self.final}: {exc.strerror or exc}") from None

    def _read_manifest(self):
        try:
            return json.loads((self.dir / STAGE_FILE).read_text(encoding="utf-8"))
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
        """Move the finished files in; this target's previous files are replaced, nothing else is touched."""
        try:
            self.files = folder.commit(self.final, self.target, self.dir, self.layout)
        except OSError as exc:
            raise BakeError(f"cannot finish the bake in {self.final}: {exc.strerror or exc}") from None
        return self.final

    @property
    def bytes(self) -> int:
        return files_size(self.final, self.files)


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


def write_record(obj, record: dict) -> None:
    obj[BAKE_PROP] = json.dumps(record)


def set_bake_record(obj, info: BakeInfo, kept: list | None = None) -> None:
    """The current bake, plus the caches of earlier bakes that were kept on disk (other targets or folders)."""
    write_record(obj, {"target": info.target, "path": info.path,
                       "dir": blend_relative(info.cache_dir) if info.cache_dir else "",
                       "frame_start": info.frame_start, "frame_end": info.frame_end,
                       "n_points": info.n_points, "kept": kept or []})


def clear_bake_record(obj) -> None:
    if BAKE_PROP in obj:
        del obj[BAKE_PROP]


def report_progress(progress, done: int, total: int, frame: int) -> None:
    """Call the optional progress callback; it may raise (e.g. to cancel) and the bake stops there."""
    if progress is not None:
        progress(done, total, frame)


# ------------------------------------------------------------------------------------------ record paths
def resolve(path: str) -> str:
    """A stored ('//'-relative or absolute) path as an absolute one, resolved against the current .blend."""
    return os.path.abspath(bpy.path.abspath(path)) if path else ""


def record_dir(record: dict | None) -> str:
    """Absolute cache folder of a bake record ('' for none or shape keys)."""
    if not record or not record.get("dir"):
        return ""
    return resolve(record["dir"])


def record_caches(record: dict | None) -> list[tuple[str, str]]:
    """(target, stored folder) of every cache a record knows: the current bake's first, then the kept ones."""
    if not record:
        return []
    out = [(record.get("target"), record.get("dir"))]
    out += [(k.get("target"), k.get("dir")) for k in record.get("kept", []) if isinstance(k, dict)]
    return [(t, d) for t, d in out if isinstance(t, str) and isinstance(d, str) and d]


def has_shape_key_bake(record: dict | None) -> bool:
    if not record:
        return False
    kept = [k.get("target") for k in record.get("kept", []) if isinstance(k, dict)]
    return record.get("target") == "shape_keys" or "shape_keys" in kept
