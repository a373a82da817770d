"""Differentiable Gaussian-splat rendering: cameras, gsplat on CUDA, a torch compositor on CPU.

Public API (see `render.py`, `camera.py`):
    Camera, camera_from_blender, look_at, orbit_cameras, turntable_cameras,
    render_splats, render_video, RenderOutput, RenderInputError

The camera module is numpy-only; everything needing torch/gsplat is imported on first use,
so `from backend.render.camera import ...` stays light enough for the Blender side.
"""

import importlib

from .camera import (  # noqa: F401  (numpy only)
    Camera,
    CameraError,
    blender_intrinsics,
    camera_from_blender,
    intrinsics_from_fov,
    look_at,
    orbit_cameras,
    turntable_cameras,
)

# Loaded on first use: render.py imports torch and gsplat, which the Blender side has not.
_LAZY = {
    "render_splats": "render",
    "render_video": "render",
    "RenderOutput": "render",
    "RenderInputError": "render",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Camera",
    "CameraError",
    "blender_intrinsics",
    "camera_from_blender",
    "intrinsics_from_fov",
    "look_at",
    "orbit_cameras",
    "turntable_cameras",
    *_LAZY,
]
