"""Preview and reference videos: MP4 (imageio-ffmpeg's bundled ffmpeg), GIF (Pillow) and folders
of frame images (PNG, JPG, ...).

Backend only: imageio-ffmpeg and Pillow are not available in Blender's Python, which is why
`backend.io` does not import this module. Frames are (T, H, W, 3) arrays, uint8 or float in
[0, 1]; reading always returns float32 in [0, 1].
"""

from __future__ import annotations

import json
import math
import os
import re

import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from .atomic import atomic_path

__all__ = ["VideoError", "write_frames_png", "write_video", "read_video", "video_fps", "video_info", "frame_files",
           "FRAME_RATE_FILE", "IMAGE_EXTS", "VIDEO_EXTS"]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")  # frames of a folder (read with Pillow)
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")
_MAX_GIF_REPEAT = 100  # a GIF frame held longer than this many base frames is a pause, not motion
# A folder of frames has no frame rate of its own; this file beside the frames carries it ({"fps": 24.0}).
FRAME_RATE_FILE = "frame_rate.json"


class VideoError(ValueError):
    """A video or frame folder cannot be read or written; the message names the file."""


def _to_uint8(frames, where: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise VideoError(f"{where}: frames must be a non-empty (T, H, W, 3) array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind not in "fb":
        raise VideoError(f"{where}: frames must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise VideoError(f"{where}: frames contain NaN or infinite values")
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _natural_key(name: str):
    """'frame_10.png' after 'frame_9.png': digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------

def write_frames_png(frames, folder: str | os.PathLike, *, prefix: str = "frame_", start: int = 0,
                     fps: float | None = None) -> list[str]:
    """Write frames as `<prefix><number>.png` (zero-padded, from `start`), each atomically.

    Older frames with the same prefix and a number outside the new range are removed, so a
    shorter rerun never leaves stale frames for a folder reader to pick up. With `fps`, the
    folder's frame rate is written beside the frames (FRAME_RATE_FILE), where video_fps finds it.
    """
    folder = os.fspath(folder)
    frames = _to_uint8(frames, folder)
    os.makedirs(folder, exist_ok=True)
    digits = max(4, len(str(start + len(frames) - 1)))
    paths = []
    for i, frame in enumerate(frames):
        path = os.path.join(folder, f"{prefix}{start + i:0{digits}d}.png")
        with atomic_path(path) as tmp:
            Image.fromarray(frame).save(tmp, format="PNG")
        paths.append(path)
    ours = re.compile(re.escape(prefix) + r"\d+\.png")
    keep = {os.path.basename(p) for p in paths}
    for name in os.listdir(folder):
        if ours.fullmatch(name) and name not in keep:
            os.remove(os.path.join(folder, name))
    if fps is not None:
        _check_fps(fps, folder)
        with atomic_path(os.path.join(folder, FRAME_RATE_FILE)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump({"fps": float(fps)}, f)
    return paths


def _check_fps(fps, where: str) -> None:
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise VideoError(f"{where}: fps must be a positive number, got {fps!r}")


def write_video(frames, path: str | os.PathLike, fps: float = 24.0, *, quality: float = 8.0) -> str:
    """Write frames to an .mp4 (H.264, yuv420p) or .gif file, atomically; returns the path.

    yuv420p needs even sizes, so MP4 frames with an odd width or height are padded by one
    row/column (edge pixels repeated). `quality` is ffmpeg's 0-10 scale (MP4 only). GIF
    stores frame times in 1/100 s, so GIF fps is rounded accordingly.
    """
    path = os.fspath(path)
    _check_fps(fps, path)
    frames = _to_uint8(frames, path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".mp4", ".gif"):
        raise VideoError(f"{path}: unsupported video type {ext or '(none)'!r}; use .mp4 or .gif "
                         "(or write_frames_png for a folder of frames)")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with atomic_path(path) as tmp:
        if ext == ".mp4":
            _write_mp4(frames, tmp, fps, quality, path)
        else:
            _write_gif(frames, tmp, fps)
    return path


def _write_mp4(frames: np.ndarray, tmp: str, fps: float, quality: float, path: str) -> None:
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(tmp, (w, h), fps=fps, quality=quality, codec="libx264",
                                         pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                                         macro_block_size=1, ffmpeg_log_level="error")
    try:
        writer.send(None)  # start ffmpeg
        for frame in frames:
            writer.send(frame.tobytes())
        writer.close()
    except (OSError, RuntimeError) as exc:
        writer.close()
        raise VideoError(f"{path}: ffmpeg could not write the video ({exc})") from exc


def _write_gif(frames: np.ndarray, tmp: str, fps: float) -> None:
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                   duration=max(10, int(round(1000.0 / fps, -1))), loop=0)


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------

def read_video(path: str | os.PathLike, *, max_frames: int | None = None) -> tuple[np.ndarray, float | None]:
    """Read an MP4 (or other ffmpeg-readable video), a GIF, or a folder of PNG/JPG frames.

    Returns (frames (T, H, W, 3) float32 in [0, 1], fps or None for a folder). Folder
    frames are sorted naturally by the numbers in their names; hidden files are skipped.
    GIF frames held for several frame times are repeated, so time stays uniform.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        frames, fps = _read_folder(path, max_frames), None
    elif not os.path.isfile(path):
        raise VideoError(f"{path}: no such video file or frame folder")
    else:
        ext = os.path.splitext(path)[1].lower()
        if ext == ".gif":
            frames, fps = _read_gif(path, max_frames)
        elif ext in IMAGE_EXTS:
            frames, fps = _read_images([path], path), None
        else:
            frames, fps = _read_ffmpeg(path, max_frames)
    return frames.astype(np.float32) / np.float32(255.0), fps


def video_fps(path: str | os.PathLike) -> float | None:
    """The frame rate a clip carries, without decoding it: an MP4's stream rate, a GIF's frame
    duration, a frame folder's FRAME_RATE_FILE; None where the clip says nothing (bare frames)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return _folder_fps(path)
    if not os.path.isfile(path):
        raise VideoError(f"{path}: no such video file or frame folder")
    ext = os.path.splitext(path)[1].lower()
    if ext in IMAGE_EXTS:
        return None
    if ext == ".gif":
        return _read_gif(path, 1, decode=False)[1]
    try:
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        reader.close()
    except (OSError, RuntimeError, StopIteration) as exc:
        raise VideoError(f"{path}: cannot read video with ffmpeg ({_first_line(exc)})") from exc
    fps = meta.get("fps")
    return float(fps) if fps and math.isfinite(fps) and fps > 0 else None


def video_info(path: str | os.PathLike) -> tuple[int, int, int]:
    """(frames, height, width) of a clip as read_video would return it, without decoding a video file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        files = frame_files(path)
        if not files:
            raise VideoError(f"{path}: folder holds no frame images ({', '.join(IMAGE_EXTS)})")
        try:
            with Image.open(files[0]) as im:  # reads the header only
                width, height = im.size
        except (OSError, UnidentifiedImageError) as exc:
            raise VideoError(f"{files[0]}: cannot read image ({exc})") from exc
        return len(files), int(height), int(width)
    if os.path.splitext(path)[1].lower() == ".gif":  # frame count after undoing merged frames: decode (GIFs are small)
        frames, _ = _read_gif(path, None)
        return frames.shape[0], frames.shape[1], frames.shape[2]
    try:
        reader = imageio_ffmpeg.read_frames(path)
        meta = next(reader)
        reader.close()
        n_frames, _ = imageio_ffmpeg.count_frames_and_secs(path)
    except (OSError, RuntimeError, StopIteration) as exc:
        raise VideoError(f"{path}: cannot read video with ffmpeg ({_first_line(exc)})") from exc
    width, height = meta["size"]
    return int(n_frames), int(height), int(width)


def frame_files(folder: str | os.PathLike) -> list[str]:
    """The frame images of a folder in natural order ('frame_9' before 'frame_10'), hidden files skipped."""
    folder = os.fspath(folder)
    names = sorted((n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTS) and not n.startswith(".")),
                   key=_natural_key)
    return [os.path.join(folder, n) for n in names]


def _folder_fps(folder: str) -> float | None:
    side = os.path.join(folder, FRAME_RATE_FILE)
    if not os.path.isfile(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            fps = json.load(f)["fps"]
        _check_fps(fps, side)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise VideoError(f"{side}: cannot read the folder's frame rate ({_first_line(exc)}); "
                         'it must hold {"fps": <frames per second>}') from exc
    return float(fps)


def _read_images(paths: list[str], where: str) -> np.ndarray:
    frames = []
    for p in paths:
        try:
            with Image.open(p) as im:
                frame = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise VideoError(f"{p}: cannot read image ({exc})") from exc
        if frames and frame.shape != frames[0].shape:
            raise VideoError(f"{where}: frame {os.path.basename(p)} is {frame.shape[1]}x{frame.shape[0]} "
                             f"but the first frame is {frames[0].shape[1]}x{frames[0].shape[0]}")
        frames.append(frame)
    return np.stack(frames)


def _read_folder(folder: str, max_frames: int | None) -> np.ndarray:
    files = frame_files(folder)
    if not files:
        raise VideoError(f"{folder}: folder holds no frame images ({', '.join(IMAGE_EXTS)})")
    return _read_images(files[:max_frames], folder)


def _read_gif(path: str, max_frames: int | None, decode: bool = True) -> tuple[np.ndarray | None, float | None]:
    frames, durations = [], []
    try:
        with Image.open(path) as im:
            for frame in ImageSequence.Iterator(im):
                durations.append(int(frame.info.get("duration", 0) or 0))
                frames.append(np.asarray(frame.convert("RGB")) if decode else None)
    except (OSError, UnidentifiedImageError, EOFError) as exc:
        raise VideoError(f"{path}: cannot read GIF ({exc})") from exc
    if not frames:
        raise VideoError(f"{path}: GIF has no frames")
    positive = [d for d in durations if d > 0]
    if not decode:
        return None, (1000.0 / min(positive) if positive else None)
    if not positive:
        return np.stack(frames[:max_frames]), None
    base = min(positive)
    # Encoders merge identical consecutive frames into one longer frame; undo that.
    repeats = [min(_MAX_GIF_REPEAT, max(1, round(d / base))) for d in durations]
    expanded = [f for f, r in zip(frames, repeats) for _ in range(r)]
    return np.stack(expanded[:max_frames]), 1000.0 / base


def _read_ffmpeg(path: str, max_frames: int | None) -> tuple[np.ndarray, float | None]:
    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    frames = []
    try:
        meta = next(reader)
        w, h = meta["size"]
        for raw in reader:
            frames.append(np.frombuffer(raw, np.uint8).reshape(h, w, 3))
            if max_frames is not None and len(frames) >= max_frames:
                break
    except (OSError, RuntimeError, StopIteration, ValueError, KeyError) as exc:
        raise VideoError(f"{path}: cannot read video with ffmpeg ({_first_line(exc)})") from exc
    finally:
        reader.close()
    if not frames:
        raise VideoError(f"{path}: video has no frames")
    fps = meta.get("fps")
    return np.stack(frames), (float(fps) if fps and math.isfinite(fps) and fps > 0 else None)
