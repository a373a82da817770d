"""The estimation camera: the scene's active camera at its first frame, in the job's form."""

from __future__ import annotations

from contextlib import contextmanager

from ..backend.estimation import budget
from ..backend.render.camera import CameraError, camera_from_blender
from .errors import SetupError


def render_size(scene) -> tuple[int, int]:
    """The scene's output size in pixels (resolution times its percentage)."""
    r = scene.render
    return (max(1, round(r.resolution_x * r.resolution_percentage / 100)),
            max(1, round(r.resolution_y * r.resolution_percentage / 100)))


@contextmanager
def at_frame(scene, frame: int):
    """Evaluate the scene at ``frame`` and put the current frame back afterwards."""
    current, sub = scene.frame_current, scene.frame_subframe
    if current == frame and sub == 0.0:
        yield
        return
    scene.frame_set(frame)
    try:
        yield
    finally:
        scene.frame_set(current, subframe=sub)


def camera_settings(scene, cam_obj=None, long_side: int = 0) -> dict:
    """The active camera at the first frame, in the job's form (OpenCV viewmat, K, render size).

    ``long_side`` > 0 caps the image's long side (same framing, fewer pixels): the estimator renders
    every frame at this size, and the scene's output size (1920x1080 by default) would not fit in memory.
    """
    cam_obj = cam_obj or scene.camera
    if cam_obj is None or cam_obj.type != "CAMERA":
        raise SetupError("Estimation needs an active camera: the video prior judges the motion as seen from it. "
                         "Add a camera aimed at the object and make it active (View > Cameras > Set Active Object "
                         "as Camera)")
    r, cam = scene.render, cam_obj.data
    width, height = budget.capped_size(*render_size(scene), long_side)
    with at_frame(scene, scene.frame_start):
        matrix = [list(row) for row in cam_obj.matrix_world]
    try:
        camera = camera_from_blender(
            matrix, cam.lens, cam.sensor_width, cam.sensor_height, width, height, sensor_fit=cam.sensor_fit,
            shift_x=cam.shift_x, shift_y=cam.shift_y, pixel_aspect_x=r.pixel_aspect_x,
            pixel_aspect_y=r.pixel_aspect_y, clip_start=cam.clip_start, clip_end=cam.clip_end, type=cam.type)
    except CameraError as exc:
        raise SetupError(f"Camera '{cam_obj.name}': {exc}") from None
    return camera.to_dict()
