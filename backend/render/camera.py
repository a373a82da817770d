"""Pinhole cameras in gsplat's convention, built from Blender camera settings.

Numpy and the standard library only, so the Blender side may import this module
(`backend.render` loads its torch parts lazily).

Conventions
- `viewmat` maps world to camera coordinates in OpenCV's frame: x right, y down,
  z forward (the frame gsplat rasterises in). World space is Blender's (Z up).
- `K` holds fx, fy, cx, cy in pixels with the origin at the top-left corner of the
  top-left pixel, so pixel (i, j) has its centre at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

# A Blender camera looks down its local -Z with +Y up; OpenCV looks down +Z with +Y down.
_BLENDER_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

SENSOR_FITS = ("AUTO", "HORIZONTAL", "VERTICAL")


class CameraError(ValueError):
    """A camera description that cannot be used; the message says what to change."""


@dataclass
class Camera:
    """One pinhole view: world->camera `viewmat` (4x4), intrinsics `K` (3x3), image size."""

    viewmat: np.ndarray
    K: np.ndarray
    width: int
    height: int
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self) -> None:
        self.viewmat = np.asarray(self.viewmat, dtype=np.float64)
        self.K = np.asarray(self.K, dtype=np.float64)
        if self.viewmat.shape != (4, 4):
            raise CameraError(f"camera viewmat must be 4x4, got shape {self.viewmat.shape}")
        if self.K.shape != (3, 3):
            raise CameraError(f"camera K must be 3x3, got shape {self.K.shape}")
        if not (np.isfinite(self.viewmat).all() and np.isfinite(self.K).all()):
            raise CameraError("camera viewmat and K must be finite numbers")
        if int(self.width) != self.width or int(self.height) != self.height or self.width < 1 or self.height < 1:
            raise CameraError(f"camera image size must be positive integers, got {self.width}x{self.height}")
        self.width, self.height = int(self.width), int(self.height)
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise CameraError(f"camera focal lengths must be positive, got fx={self.K[0, 0]}, fy={self.K[1, 1]}")
        if not (0 < self.near < self.far):
            raise CameraError(f"camera clip range must satisfy 0 < near < far, got near={self.near}, far={self.far}")

    @property
    def campos(self) -> np.ndarray:
        """Camera centre in world space."""
        R, t = self.viewmat[:3, :3], self.viewmat[:3, 3]
        return -np.linalg.solve(R, t)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (..., 3) -> pixel coordinates (..., 2) and camera depth z (...)."""
        p = np.asarray(points, dtype=np.float64)
        pc = p @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        z = pc[..., 2]
        uv = (pc @ self.K.T)[..., :2] / z[..., None]
        return uv, z

    def to_dict(self) -> dict[str, Any]:
        return {
            "viewmat": self.viewmat.tolist(),
            "K": self.K.tolist(),
            "width": self.width,
            "height": self.height,
            "near": float(self.near),
            "far": float(self.far),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Camera":
        missing = [k for k in ("viewmat", "K", "width", "height") if k not in d]
        if missing:
            raise CameraError(f"camera entry is missing {', '.join(missing)}")
        return cls(
            viewmat=d["viewmat"],
            K=d["K"],
            width=d["width"],
            height=d["height"],
            near=float(d.get("near", 0.01)),
            far=float(d.get("far", 1e10)),
        )


def _normalized_columns(m3: np.ndarray) -> np.ndarray:
    # Blender's world_to_camera_view uses matrix_world.normalized(): object scale on a
    # camera does not change what it sees.
    norms = np.linalg.norm(m3, axis=0)
    if np.any(norms < 1e-12):
        raise CameraError("camera matrix_world has a zero-length axis (scale 0); reset the camera's scale")
    return m3 / norms


def blender_intrinsics(
    lens: float,
    sensor_width: float,
    sensor_height: float,
    sensor_fit: str,
    shift_x: float,
    shift_y: float,
    width: int,
    height: int,
    pixel_aspect_x: float = 1.0,
    pixel_aspect_y: float = 1.0,
) -> np.ndarray:
    """K (3x3) for a perspective Blender camera rendered at `width` x `height` pixels.

    Follows Blender's view-plane rules: AUTO fits the sensor width to the larger of the
    two image sides (measured with pixel aspect); HORIZONTAL fits sensor_width to the
    image width; VERTICAL fits sensor_height to the image height. Shift is a fraction of
    the fitted side. Pixel aspect x/y makes pixels non-square (ycor = aspect_y/aspect_x).
    """
    fit = str(sensor_fit).upper()
    if fit not in SENSOR_FITS:
        raise CameraError(f"sensor_fit must be one of {SENSOR_FITS}, got {sensor_fit!r}")
    for name, v in (("lens", lens), ("sensor_width", sensor_width), ("sensor_height", sensor_height),
                    ("pixel_aspect_x", pixel_aspect_x), ("pixel_aspect_y", pixel_aspect_y)):
        if not (math.isfinite(v) and v > 0):
            raise CameraError(f"camera {name} must be a positive number, got {v}")
    if int(width) < 1 or int(height) < 1:
        raise CameraError(f"render resolution must be at least 1x1, got {width}x{height}")

    ycor = pixel_aspect_y / pixel_aspect_x
    if fit == "AUTO":
        fit = "HORIZONTAL" if pixel_aspect_x * width >= pixel_aspect_y * height else "VERTICAL"
        sensor = sensor_width  # AUTO always fits sensor_width, to whichever side is larger
    else:
        sensor = sensor_width if fit == "HORIZONTAL" else sensor_height
    viewfac = width if fit == "HORIZONTAL" else ycor * height

    f = lens * viewfac / sensor  # pixels per unit of x/z horizontally
    fx, fy = f, f / ycor
    cx = 0.5 * width - shift_x * viewfac
    cy = 0.5 * height + shift_y * viewfac / ycor  # Blender's +y shift moves the frame up
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def camera_from_blender(
    matrix_world: Sequence[Sequence[float]],
    lens: float,
    sensor_width: float,
    sensor_height: float,
    resolution_x: int,
    resolution_y: int,
    sensor_fit: str = "AUTO",
    shift_x: float = 0.0,
    shift_y: float = 0.0,
    pixel_aspect_x: float = 1.0,
    pixel_aspect_y: float = 1.0,
    clip_start: float = 0.1,
    clip_end: float = 1000.0,
    type: str = "PERSP",  # noqa: A002 - Blender's attribute name
) -> Camera:
    """Build a Camera from a Blender camera's values (plain floats; no bpy needed).

    `matrix_world` is the camera object's 4x4 world matrix (row-major, as
    `[list(row) for row in ob.matrix_world]`). `resolution_x/y` are the final pixel counts:
    the caller applies resolution_percentage. Argument names match bpy's attribute names,
    so the Blender side can pass a dict of them straight through.
    """
    if str(type).upper() != "PERSP":
        raise CameraError(f"only perspective cameras are supported, this camera is {type!r}; "
                          "set the camera's Type to Perspective")
    M = np.asarray(matrix_world, dtype=np.float64)
    if M.shape != (4, 4) or not np.isfinite(M).all():
        raise CameraError(f"matrix_world must be a finite 4x4 matrix, got shape {M.shape}")
    if not (0 < clip_start < clip_end):
        raise CameraError(f"camera clip must satisfy 0 < clip_start < clip_end, got {clip_start}, {clip_end}")
    cam_to_world = np.eye(4)
    cam_to_world[:3, :3] = _normalized_columns(M[:3, :3])
    cam_to_world[:3, 3] = M[:3, 3]
    viewmat = _BLENDER_TO_OPENCV @ np.linalg.inv(cam_to_world)
    K = blender_intrinsics(lens, sensor_width, sensor_height, sensor_fit, shift_x, shift_y,
                           int(resolution_x), int(resolution_y), pixel_aspect_x, pixel_aspect_y)
    return Camera(viewmat=viewmat, K=K, width=int(resolution_x), height=int(resolution_y),
                  near=float(clip_start), far=float(clip_end))


def look_at(eye: Sequence[float], target: Sequence[float], up: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """World->camera viewmat (OpenCV axes) for a camera at `eye` looking at `target`.

    The image's up direction is as close to `up` (world +Z by default) as possible.
    """
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    forward = target - eye
    n = np.linalg.norm(forward)
    if n < 1e-12:
        raise CameraError("look_at: eye and target are the same point")
    forward /= n
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-9 * max(1.0, np.linalg.norm(up)):
        raise CameraError("look_at: the view direction is parallel to 'up'; pick another up vector")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    viewmat = np.eye(4)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = -R @ eye
    return viewmat


def intrinsics_from_fov(width: int, height: int, fov_deg: float) -> np.ndarray:
    """K for a centred pinhole whose larger image side spans `fov_deg` degrees."""
    if not (0 < fov_deg < 180):
        raise CameraError(f"field of view must be between 0 and 180 degrees, got {fov_deg}")
    f = 0.5 * max(width, height) / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def orbit_cameras(
    target: Sequence[float],
    radius: float,
    n_views: int,
    width: int,
    height: int,
    fov_deg: float = 40.0,
    elevation_deg: float | Sequence[float] = 15.0,
    azimuth_start_deg: float = 0.0,
    azimuth_sweep_deg: float = 360.0,
    up: Sequence[float] = (0.0, 0.0, 1.0),
    near: float = 0.01,
    far: float = 1e10,
) -> list[Camera]:
    """Cameras on a sphere around `target`, all looking at it.

    Azimuths step evenly from `azimuth_start_deg` over `azimuth_sweep_deg` (a full
    360 sweep does not repeat its first view). `elevation_deg` is a constant or one
    value per view (for paths that rise and fall). Azimuth 0 looks from +X (world, Z up).
    """
    if n_views < 1:
        raise CameraError(f"n_views must be at least 1, got {n_views}")
    if not radius > 0:
        raise CameraError(f"orbit radius must be positive, got {radius}")
    elev = np.broadcast_to(np.asarray(elevation_deg, dtype=np.float64), (n_views,))
    full_circle = abs(abs(azimuth_sweep_deg) - 360.0) < 1e-9
    steps = n_views if full_circle or n_views == 1 else n_views - 1
    az = azimuth_start_deg + azimuth_sweep_deg * np.arange(n_views) / max(steps, 1)
    if abs(elev).max() >= 90.0:
        raise CameraError("orbit elevations must stay strictly between -90 and 90 degrees")
    target = np.asarray(target, dtype=np.float64)
    K = intrinsics_from_fov(width, height, fov_deg)
    cams = []
    for a, e in zip(np.radians(az), np.radians(elev)):
        eye = target + radius * np.array([math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e)])
        cams.append(Camera(look_at(eye, target, up), K.copy(), width, height, near, far))
    return cams


def turntable_cameras(
    target: Sequence[float],
    radius: float,
    n_views: int,
    width: int,
    height: int,
    fov_deg: float = 40.0,
    elevation_deg: float = 15.0,
    near: float = 0.01,
    far: float = 1e10,
) -> list[Camera]:
    """A full 360-degree turn at a fixed elevation, evenly spaced (first view not repeated)."""
    return orbit_cameras(target, radius, n_views, width, height, fov_deg=fov_deg, elevation_deg=elevation_deg,
                         azimuth_sweep_deg=360.0, near=near, far=far)
