"""Interior filling of a splat object (numpy only, vectorised; no per-cell Python loops).

The one fill algorithm of the product: the backend fills with it and the add-on's panel previews
with it (this module imports nothing but numpy and the contract, so Blender's Python can load it).

The splats' opacity is splatted into a density grid (Gaussians dilated by half a cell so thin
splats still register), thresholded into a surface mask whose one-cell gaps are closed
morphologically, and every empty cell casts six
axis-aligned rays: along each ray the number of surface crossings (runs of occupied cells) is
counted with cumulative sums. A cell is inside when the count is odd for at least `min_votes` of
the six directions. The default 5 of 6 lets one ray escape through a hole (a scan without a
bottom, say) while ragged open edges, where several rays see spurious crossings, stay empty.

Detection ("auto", the default): a capture is filled only when it is a closed-ish shell. Most of
its interior cells must be enclosed: either sealed off from the outside (a flood fill from the grid's
border through empty cells, after closing one-cell gaps, cannot reach them: a closed sphere, a donut)
or seen as inside along all six directions (a shell with a moderate hole: only the rays through the
hole escape). A bowl or a cup is neither: every cavity cell sees out through its opening. The
interior must also be more than a sliver of the object: a solid point cloud has next to no empty
inside cells and is left as it is.
"""

from __future__ import annotations

import time

import numpy as np

from typing import Any, Mapping

from .. import protocol
from .shape import quat_to_matrix, splat_shape

_MAX_EVALS_PER_CHUNK = 4_000_000
# "auto" fills a shell when at least this share of its interior cells is enclosed along all six axes...
CLOSED_FRACTION = 0.5
# ...and its interior is at least this share of interior + surface cells (below it, it is solid already).
HOLLOW_FRACTION = 0.05
DEFAULT_OPACITY_LOGIT = 3.0  # opacity of points without one (a plain point cloud: nearly opaque)


def _activate(scales, opacities, scales_are_log, opacities_are_logits):
    s = np.exp(scales) if scales_are_log else np.asarray(scales, dtype=np.float64)
    o = 1.0 / (1.0 + np.exp(-opacities)) if opacities_are_logits else np.asarray(opacities, dtype=np.float64)
    return s, np.clip(o, 0.0, 1.0)


def _density(pos, scales, rot, opac, lo, h, shape):
    """Sum over splats of opacity * exp(-d^T Sigma'^-1 d / 2) at the cell centres, with
    Sigma' = R S^2 R^T + (h/2)^2 I, evaluated within a stencil of 1-3 cells around each splat
    (the grid keeps 3 empty cells around the splats, so the stencils never leave it)."""
    cov = (rot * scales[:, None, :] ** 2) @ np.transpose(rot, (0, 2, 1)) + (0.5 * h) ** 2 * np.eye(3)
    prec = np.linalg.inv(cov).astype(np.float32)
    sigma_max = np.sqrt(np.linalg.eigvalsh(cov)[:, -1])
    radius = np.clip(np.ceil(3.0 * sigma_max / h - 0.5), 1, 3).astype(np.int64)
    cell = np.floor((pos - lo) / h).astype(np.int64)
    to_centre = (lo + (cell + 0.5) * h - pos).astype(np.float32)     # splat -> its own cell centre
    flat_cell = np.ravel_multi_index(tuple(cell.T), shape)
    strides = np.array([shape[1] * shape[2], shape[2], 1])
    dens = np.zeros(int(np.prod(shape)), dtype=np.float64)
    for r in np.unique(radius):
        sel = np.nonzero(radius == r)[0]
        rng = np.arange(-r, r + 1)
        off = np.stack(np.meshgrid(rng, rng, rng, indexing="ij"), -1).reshape(-1, 3)
        off_d = (off * h).astype(np.float32)
        off_flat = off @ strides
        chunk = max(1, _MAX_EVALS_PER_CHUNK // len(off))
        for c0 in range(0, len(sel), chunk):
            idx = sel[c0:c0 + chunk]
            dx = to_centre[idx, 0, None] + off_d[None, :, 0]
            dy = to_centre[idx, 1, None] + off_d[None, :, 1]
            dz = to_centre[idx, 2, None] + off_d[None, :, 2]
            p = prec[idx]
            m = (p[:, 0, 0, None] * dx * dx + p[:, 1, 1, None] * dy * dy + p[:, 2, 2, None] * dz * dz
                 + 2.0 * (p[:, 0, 1, None] * dx * dy + p[:, 0, 2, None] * dx * dz + p[:, 1, 2, None] * dy * dz))
            val = opac[idx, None].astype(np.float32) * np.exp(-0.5 * m)
            flat = (flat_cell[idx, None] + off_flat[None, :]).ravel()
            dens += np.bincount(flat, weights=val.ravel(), minlength=dens.size)
    return dens.reshape(shape)


def _dilate(mask: np.ndarray) -> np.ndarray:
    """OR of a mask with its 6 face neighbours (cells beyond the border count as empty)."""
    p = np.pad(mask, 1)
    out = p.copy()
    for axis in range(3):
        out |= np.roll(p, 1, axis=axis) | np.roll(p, -1, axis=axis)
    return out[1:-1, 1:-1, 1:-1]


def _close(mask: np.ndarray) -> np.ndarray:
    """Morphological closing (dilate, then erode): seals surface gaps one cell wide before the
    parity test. The grid keeps 3 empty cells around the object, so the border never matters."""
    return ~_dilate(~_dilate(mask))


def _parity_votes(occ: np.ndarray) -> np.ndarray:
    """Number of the 6 axis directions along which a cell sees an odd number of surface runs."""
    votes = np.zeros(occ.shape, dtype=np.int8)
    for axis in range(3):
        prev = np.zeros_like(occ)
        sl_dst = [slice(None)] * 3
        sl_src = [slice(None)] * 3
        sl_dst[axis], sl_src[axis] = slice(1, None), slice(None, -1)
        prev[tuple(sl_dst)] = occ[tuple(sl_src)]
        starts = occ & ~prev                                    # first cell of each occupied run
        before = np.cumsum(starts, axis=axis, dtype=np.int32)   # runs at or before the cell
        total = np.take(before, [-1], axis=axis)
        votes += (before % 2 == 1)
        votes += ((total - before) % 2 == 1)
    return votes


def fill_interior(positions, scales, rotations, opacities, n_grid_fill: int = 128, max_particles: int = 200_000,
                  density_threshold: float = 0.3, min_votes: int = 5, spacing: float | None = None,
                  scales_are_log: bool = False, opacities_are_logits: bool = False, seed: int = 0,
                  auto: bool = False):
    """Particles filling the interior of a closed splat surface.

    positions (N,3) m; scales (N,3) linear metres (or log with scales_are_log); rotations (N,4)
    wxyz; opacities (N,) in [0,1] (or logits with opacities_are_logits). n_grid_fill: density grid
    cells along the longest axis (a few times the MPM resolution). One particle is placed at the
    centre of every inside cell, or on a lattice of `spacing` metres if given; above
    max_particles a random subset (seeded) is kept. auto=True fills only what classify_shape
    calls a "shell"; otherwise every inside cell is filled.

    Returns (fill_positions (M,3) float32, info); info holds "is_fill" (N+M,) flags for
    concatenate([positions, fill_positions]), the grid shape/cell size, counts, and the shape's
    class ("shell", "open" or "solid") with the two fractions it was decided on.
    """
    t0 = time.perf_counter()
    pos = np.asarray(positions, dtype=np.float64)
    n = pos.shape[0] if pos.ndim == 2 else 0
    if pos.ndim != 2 or pos.shape[1] != 3 or n == 0:
        raise ValueError(f"positions: expected (N,3) with N >= 1, got {np.shape(positions)}")
    for name, a, shape in (("scales", scales, (n, 3)), ("rotations", rotations, (n, 4)), ("opacities", opacities, (n,))):
        if np.shape(a) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {np.shape(a)}")
        if not np.isfinite(np.asarray(a, dtype=np.float64)).all():
            raise ValueError(f"{name}: contains NaN or inf")
    if not np.isfinite(pos).all():
        raise ValueError("positions: contain NaN or inf")
    if not 8 <= int(n_grid_fill) <= 1024:
        raise ValueError(f"n_grid_fill must be in 8..1024, got {n_grid_fill}")
    if int(max_particles) < 0:
        raise ValueError("max_particles must be >= 0")
    if not 1 <= int(min_votes) <= 6:
        raise ValueError("min_votes must be in 1..6")
    sc, op = _activate(np.asarray(scales, np.float64), np.asarray(opacities, np.float64), scales_are_log,
                       opacities_are_logits)
    rot = quat_to_matrix(np.asarray(rotations, np.float64))

    lo, hi = pos.min(axis=0), pos.max(axis=0)
    extent = max(float((hi - lo).max()), 1e-6)
    h = extent / (int(n_grid_fill) - 6)
    lo = lo - 3.5 * h  # half a cell of slack so rounding never puts a splat closer than 3 cells
    shape = tuple(int(np.ceil((hi - lo)[a] / h)) + 4 for a in range(3))  # 3+ empty cells each side

    dens = _density(pos, sc, rot, op, lo, h, shape)
    occ = _close(dens > density_threshold)
    votes = _parity_votes(occ)
    inside = (~occ) & (votes >= int(min_votes))
    shape_class, closed, hollow, outside = classify_shape(inside, votes, occ)
    if auto and shape_class != "shell":
        inside = np.zeros_like(inside)
    elif outside is not None:  # a sealed shell: what the outside reaches is not inside, whatever rays say
        inside &= ~outside

    if spacing is None:
        cells = np.argwhere(inside)
        fill = lo + (cells + 0.5) * h
    else:
        if spacing <= 0:
            raise ValueError("spacing must be > 0")
        axes = [np.arange(lo[a] + 0.5 * spacing, lo[a] + shape[a] * h, spacing) for a in range(3)]
        lattice = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        idx = np.minimum(np.floor((lattice - lo) / h).astype(np.int64), np.asarray(shape) - 1)
        fill = lattice[inside[idx[:, 0], idx[:, 1], idx[:, 2]]]
    truncated = len(fill) > int(max_particles)
    if truncated:
        keep = np.random.default_rng(seed).choice(len(fill), int(max_particles), replace=False)
        fill = fill[np.sort(keep)]
    fill = fill.astype(np.float32)
    info = {
        "is_fill": np.concatenate([np.zeros(n, bool), np.ones(len(fill), bool)]),
        "n_fill": int(len(fill)),
        "n_inside_cells": int(inside.sum()),
        "n_surface_cells": int(occ.sum()),
        "cell_size": float(h),
        "grid_shape": shape,
        "grid_origin": lo.astype(np.float32),
        "truncated": bool(truncated),
        "shape": shape_class,
        "closed_fraction": closed,
        "hollow_fraction": hollow,
        "seconds": time.perf_counter() - t0,
    }
    return fill, info


def _spread_along(free: np.ndarray, reached: np.ndarray, axis: int) -> np.ndarray:
    """Every free cell in a run (along ``axis``) of free cells that holds a reached cell is reached."""
    f = np.moveaxis(free, axis, -1)
    shape = f.shape
    f = f.reshape(-1, shape[-1])
    r = np.moveaxis(reached, axis, -1).reshape(-1, shape[-1])
    prev = np.zeros_like(f)
    prev[:, 1:] = f[:, :-1]
    run = np.cumsum((f & ~prev).ravel()).reshape(f.shape) * f  # run id per free cell, 0 elsewhere
    hit = np.zeros(int(run.max()) + 1, bool)
    hit[run[r & f]] = True
    hit[0] = False
    return np.moveaxis((hit[run] & f).reshape(shape), -1, axis)


def _outside(occ: np.ndarray) -> np.ndarray:
    """Empty cells connected to the grid's border (flood fill along runs, sweeping the three axes until
    nothing changes), with one-cell gaps in the surface sealed so a leak needs a real hole."""
    sealed = _dilate(occ)
    free = ~sealed
    reached = np.zeros_like(free)
    for axis in range(3):
        ends = [slice(None)] * 3
        for end in (0, -1):
            ends[axis] = end
            reached[tuple(ends)] = free[tuple(ends)]
    count = -1
    while int(reached.sum()) != count:
        count = int(reached.sum())
        for axis in range(3):
            reached = _spread_along(free, reached, axis)
    return _dilate(reached) & ~occ  # back over the sealing layer


def classify_shape(inside: np.ndarray, votes: np.ndarray, occ: np.ndarray):
    """("shell" | "open" | "solid", closed fraction, hollow fraction, outside) of a surface grid (see the
    module doc). outside: the cells the flood fill reached when that is what found the shell closed, else None."""
    n_inside = int(inside.sum())
    closed, outside = 0.0, None
    if n_inside:
        reached = _outside(occ)
        sealed_off = int((inside & ~reached).sum())
        seen_inside = int((inside & (votes == 6)).sum())
        closed = max(sealed_off, seen_inside) / n_inside
        outside = reached if sealed_off >= max(seen_inside, 1) else None
    hollow = n_inside / max(n_inside + int(occ.sum()), 1)
    if closed < CLOSED_FRACTION:
        return ("solid" if hollow < HOLLOW_FRACTION else "open"), closed, hollow, outside
    return ("shell" if hollow >= HOLLOW_FRACTION else "solid"), closed, hollow, outside


def fill_mode(fill: Mapping[str, Any] | None) -> str | bool:
    """The job's fill.enabled: "auto" (fill closed shells only), True (always) or False (never)."""
    return (fill or {}).get("enabled", protocol.SIMULATION_DEFAULTS["fill"]["enabled"])


def fill_resolution(fill: Mapping[str, Any] | None, n_grid: int) -> int:
    """Fill-grid cells along the object's longest side: the job's resolution, or 0 = twice the MPM grid."""
    return int((fill or {}).get("resolution") or 0) or 2 * int(n_grid)


def fill_scene(scene: Mapping[str, np.ndarray], fill: Mapping[str, Any] | None, n_grid: int):
    """The interior particles a job adds, from its scene.npz arrays and simulation.fill settings.

    Both the backend and the add-on's preview call this with the same arrays (the add-on with
    what it would write to scene.npz), so the preview count is the count the backend adds.
    Returns (positions (M,3) float32, info as fill_interior's; info["mode"] is the mode used).
    """
    mode = fill_mode(fill)
    pos = np.asarray(scene["positions"], np.float32)
    if mode is False:
        return np.zeros((0, 3), np.float32), {"n_fill": 0, "shape": "off", "mode": False,
                                              "is_fill": np.zeros(len(pos), bool)}
    log_scale, quat = splat_shape(scene, pos)
    opacity = np.asarray(scene["opacity"], np.float32) if "opacity" in scene else \
        np.full(len(pos), DEFAULT_OPACITY_LOGIT, np.float32)
    extra, info = fill_interior(pos, log_scale, quat, opacity, fill_resolution(fill, n_grid),
                                int((fill or {}).get("max_particles", 200000)), scales_are_log=True,
                                opacities_are_logits=True, auto=mode == protocol.FILL_AUTO)
    info["mode"] = mode
    return extra, info


def describe_fill(info: Mapping[str, Any]) -> str:
    """One sentence on what the fill did and why, for the backend's log and the add-on's panel."""
    shape, n = info.get("shape"), info.get("n_fill", 0)
    if n:
        return f"Filled the interior with {n:,} particles ({shape}: {info['closed_fraction']:.0%} enclosed)"
    if shape == "open":
        return (f"Not filled: the surface is open ({info['closed_fraction']:.0%} of its inside is enclosed); "
                "set Fill interior to On to fill it anyway")
    if shape == "solid":
        return "Not filled: nothing hollow is enclosed (the object is solid, flat or thin)"
    if shape == "off":
        return "Interior fill is off"
    return "Nothing to fill"
