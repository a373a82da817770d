"""The panel's readouts of the grid: particles per cell, occupied cells and the interior fill's count."""

from __future__ import annotations

import numpy as np

from ..backend import protocol
from ..backend.geometry import fill
from .domain import grid_box
from .errors import SetupError
from .points import splat_scene_arrays, world_positions

# Above this many points the panel's fill count is computed on request (Preview Fill), not on every settings
# change: it takes seconds for tens of thousands of splats at the default grid (about 6 s for 45k), too slow
# to run on every slider step.
FILL_READOUT_MAX_POINTS = 20_000
# The panel's fill modes and the job's simulation.fill.enabled values (protocol.FILL_MODES).
FILL_MODE_ITEMS = [
    ("AUTO", "Auto", "Fill the interior when the object is a closed (or nearly closed) shell"),
    ("ON", "On", "Always fill whatever the surface encloses, even an open one"),
    ("OFF", "Off", "Never fill: simulate the splats as they are"),
]
FILL_MODE_TO_JOB = {"AUTO": protocol.FILL_AUTO, "ON": True, "OFF": False}


def cell_indices(positions, lo, hi, resolution: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Integer cell of each point inside the box (cells are cubes: resolution along the longest side)."""
    dx = float(np.max(hi - lo)) / resolution
    dims = np.maximum(np.ceil((hi - lo) / dx - 1e-9).astype(int), 1)
    inside = np.all((positions >= lo) & (positions <= hi), axis=1)
    ijk = np.clip(np.floor((positions[inside] - lo) / dx).astype(np.int64), 0, dims - 1)  # hi itself: last cell
    return ijk, dims, dx


def occupied_cells(positions, lo, hi, resolution: int) -> int:
    ijk, dims, _ = cell_indices(positions, lo, hi, resolution)
    flat = (ijk[:, 0] * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]
    return int(len(np.unique(flat)))


def fill_settings(settings) -> dict:
    """The job's simulation.fill section from the panel's settings."""
    return {"enabled": FILL_MODE_TO_JOB[settings.fill_mode], "max_particles": int(settings.fill_max_particles),
            "resolution": int(settings.fill_resolution)}


def estimate_fill(obj, positions=None) -> tuple[int, np.ndarray, str]:
    """How many particles the backend's interior fill will add, their world positions and a sentence on why.

    It runs the backend's own fill (backend/geometry/fill.py) on the arrays scene.npz will hold, so the count
    is the backend's count, not an estimate of it.
    """
    s = obj.splat_physics
    arrays = splat_scene_arrays(obj, positions)
    centres, info = fill.fill_scene(arrays, fill_settings(s), s.n_grid)
    return len(centres), centres, fill.describe_fill(info)


def update_readouts(obj) -> None:
    """Particles per cell (N / occupied cells at the grid resolution) and the fill count, for the panel."""
    s = obj.splat_physics
    try:
        positions = world_positions(obj)
    except SetupError:
        s.particles_per_cell, s.occupied_cells, s.fill_preview_count = 0.0, 0, -1
        return
    lo, hi = grid_box(obj, positions)
    cells = occupied_cells(positions, lo, hi, s.n_grid)
    s.occupied_cells = cells
    s.particles_per_cell = len(positions) / max(cells, 1)
    if s.fill_mode == "OFF" or len(positions) > FILL_READOUT_MAX_POINTS:
        s.fill_preview_count, s.fill_preview_note = -1, ""  # large objects: on request (Preview Fill)
    else:
        s.fill_preview_count, _, s.fill_preview_note = estimate_fill(obj, positions)
