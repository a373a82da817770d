"""What one estimation iteration costs, what this machine can take, and the defaults that fit it.

Numpy and the standard library only: the add-on imports it to show the projection and refuse a run
before it starts, and the backend imports it to refuse a job that will not fit (exit 2 with the fix).

The projection is a linear model on the terms of ``terms()``; its coefficients were fitted to
measurements of the real estimate path on the development machine (2-core CPU, warp CPU, torch CPU
renderer, reference supervision): ``python benchmarks/estimate_budget.py`` measures the grid of
sizes and prints the fit. What drives the cost:

* the differentiable MPM: particle-substeps (checkpointed every 16 substeps; each checkpoint and
  each taped substep of a segment is per particle) and grid-node-substeps;
* the torch tile renderer: rendered pixels (forward and backward keep per-tile alpha buffers) and
  splats per frame;
* a video model's weights and activations (not measurable here; see PRIOR_MODELS).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .. import protocol

# Defaults an estimation starts from on each device: particles simulated while estimating (the result
# reaches every point) and the long side of the rendered frames. On a GPU the video model's native size
# is the right resolution (SVD-xt 1024x576, ModelScope 256x256); on a CPU only reference fitting at a
# small size is practical.
@dataclass(frozen=True)
class DeviceDefaults:
    max_particles: int
    long_side: int  # 0 = the prior's native size


DEVICE_DEFAULTS = {"cpu": DeviceDefaults(max_particles=3000, long_side=256),
                   "cuda": DeviceDefaults(max_particles=100_000, long_side=0)}
NATIVE_LONG_SIDE = {"svd": 1024, "modelscope": 256, "reference": 512, "analytic": 512}


@dataclass(frozen=True)
class PriorModel:
    weights_mb: float  # resident weights (fp32 on CPU, fp16 on CUDA: halved)
    mb_per_frame_pixel: float  # activations of the VAE encoder backward and the UNet forward


# SVD-xt: UNet 1.5 B + image encoder 0.63 B + VAE 0.1 B parameters; ModelScope 1.7 B in all. The
# activation figure is scaled from the README's "about 16 GB" for SVD-xt at 25 x 1024 x 576 on CUDA;
# it was not measured on this machine (no GPU, no weights).
PRIOR_MODELS = {"svd": PriorModel(weights_mb=9000.0, mb_per_frame_pixel=8.0e-4),
                "modelscope": PriorModel(weights_mb=6800.0, mb_per_frame_pixel=8.0e-4)}

# Fitted on the development machine by benchmarks/estimate_budget.py: seconds on the terms of terms(),
# [1, N, N*S, G*S, F*P, F*N] with S the substeps simulated, G the grid nodes, F the rendered frames, P the
# pixels per frame; MB on those of memory_terms(), the same with G for G*S (the grid's own arrays: what a
# substep keeps of the grid is capped, GRID_STORE_MB below, while the checkpoints grow with N*S).
# Memory is the whole backend process (torch, warp and the scene included), the tape terms below added:
# 0.93x to 1.70x of the twelve measurements (the sim-heavy cases over-projected: their tape is not all live).
# Time: 0.58x to 1.39x, eight of the twelve within 15% (refitted after the adjoint and estimate speed-ups,
# which had left the earlier fit 1.8x to 8.5x too slow: 71 s projected for an 8.4 s iteration).
SECONDS_COEF = (0.0756, 0.0, 7.74e-7, 7.44e-9, 1.88e-6, 7.04e-6)
MB_COEF = (668.0, 0.0, 2.44e-5, 2.68e-4, 4.58e-4, 3.03e-3)
# The differentiable simulation keeps its whole gradient tape (no recomputation in backward) when the tape
# needs at most this much; about 340 bytes per particle-substep (README: 3.4 MB per taped substep at 10k).
# The fit above was measured with checkpointing only, so the tape is added on top.
FULL_TAPE_MB = 512.0
# A checkpointed forward keeps each substep's P2G grid (16 bytes per node of the particles' box) and, while
# the budget left holds the grids to come, its particles' stresses (36 bytes each) up to this much, so that
# backward recomputes only the grid update and G2P (backend/mpm/autograd.py); projected on the whole grid's
# nodes (an upper bound of the box's).
GRID_STORE_MB = 256.0
GRID_MB_PER_NODE_SUBSTEP = 16 / 2**20
STRESS_MB_PER_PARTICLE_SUBSTEP = 36 / 2**20
TAPE_MB_PER_PARTICLE_SUBSTEP = 3.4 / 10_000
CPU_SLOWDOWN_ON_CUDA = 0.1  # GPU iterations are far cheaper; the memory model is what matters there
SAFETY = 1.25  # the projection is multiplied by this before it is compared with free memory


@dataclass(frozen=True)
class Projection:
    seconds: float  # one iteration
    memory_mb: float  # peak resident memory of the backend process during an iteration

    def text(self) -> str:
        return f"about {human_mb(self.memory_mb)} and {human_seconds(self.seconds)} per iteration"


def terms(n_particles: int, pixels: int, frames: int, substeps_per_frame: int, n_grid: int) -> list[float]:
    """The cost model's regressors for one iteration."""
    substeps = max(frames - 1, 1) * max(int(substeps_per_frame), 1)
    nodes = float(n_grid) ** 3
    return [1.0, float(n_particles), float(n_particles) * substeps, nodes * substeps, float(frames) * pixels,
            float(frames) * n_particles]


def memory_terms(n_particles: int, pixels: int, frames: int, substeps_per_frame: int, n_grid: int) -> list[float]:
    """The memory model's regressors: terms() with the grid's nodes in place of its node-substeps."""
    x = terms(n_particles, pixels, frames, substeps_per_frame, n_grid)
    x[3] = float(n_grid) ** 3
    return x


def project(*, n_particles: int, width: int, height: int, frames: int, substeps_per_frame: int, n_grid: int,
            prior: str, device: str) -> Projection:
    """Seconds and MB of one estimation iteration."""
    x = terms(n_particles, width * height, frames, substeps_per_frame, n_grid)
    seconds = sum(c * v for c, v in zip(SECONDS_COEF, x))
    mb = sum(c * v for c, v in zip(MB_COEF, memory_terms(n_particles, width * height, frames, substeps_per_frame,
                                                        n_grid)))
    tape_mb = TAPE_MB_PER_PARTICLE_SUBSTEP * x[2]  # x[2]: particle-substeps
    mb += min(FULL_TAPE_MB, tape_mb)
    if tape_mb > FULL_TAPE_MB:  # checkpointed: the kept P2G grids (x[3]: node-substeps) and stresses
        mb += min(GRID_STORE_MB, GRID_MB_PER_NODE_SUBSTEP * x[3] + STRESS_MB_PER_PARTICLE_SUBSTEP * x[2])
    model = PRIOR_MODELS.get(prior)
    if model is not None:
        scale = 0.5 if device == "cuda" else 1.0  # fp16 weights and activations on the GPU
        mb += scale * (model.weights_mb + model.mb_per_frame_pixel * frames * width * height)
    if device == "cuda":
        seconds *= CPU_SLOWDOWN_ON_CUDA
    return Projection(seconds=seconds, memory_mb=mb)


def substeps_per_frame(E_max: float, nu: float, rho_min: float, dx: float, fps: float, cfl: float = protocol.CFL,
                       cap: int = protocol.SIMULATION.fields["max_substeps_per_frame"].default) -> int:
    """Substeps per frame of the automatic CFL bound dt <= cfl * dx / c_p (before the motion adds speed),
    as backend/mpm/grid.plan_substeps computes it; for a projection made before the backend runs."""
    c_p = float(protocol.p_wave_speed(E_max, nu, rho_min))
    return max(1, min(cap, math.ceil(c_p / (fps * cfl * dx) - 1e-9)))


def substeps_from_dt(fps: float, substep_dt: float) -> int:
    """Substeps per frame for a fixed substep length (the frame is split evenly, never longer than asked)."""
    return max(1, math.ceil(1.0 / (fps * substep_dt) - 1e-6))


def planned_substeps(E_max: float, nu: float, rho_min: float, extent: float, n_grid: int, fps: float,
                     substep_dt: float | None = None) -> int:
    """Substeps per frame the solver will plan for a domain whose largest side is ``extent`` metres: the
    artist's substep length when set, else the CFL bound on the grid's cell (as backend/mpm/grid.py sizes
    it: the domain spans n_grid - 2 * protocol.GRID_PADDING cells)."""
    if substep_dt:
        return substeps_from_dt(fps, substep_dt)
    dx = max(extent, 1e-6) / max(n_grid - 2 * protocol.GRID_PADDING, 1)
    return substeps_per_frame(E_max, nu, rho_min, dx, fps)


def capped_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """(width, height) scaled down so the long side is at most ``long_side`` (never up), aspect kept.
    Both stay multiples of 8, which the video models' VAEs need."""
    if long_side <= 0 or max(width, height) <= long_side:
        return int(width), int(height)
    k = long_side / max(width, height)
    return max(8, int(round(width * k / 8)) * 8), max(8, int(round(height * k / 8)) * 8)


def effective_long_side(requested: int, device: str, prior: str) -> int:
    """The estimation resolution's long side: the artist's value, else the device's default."""
    if requested > 0:
        return int(requested)
    default = DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cpu"]).long_side
    return default or NATIVE_LONG_SIDE.get(prior, 512)


def effective_max_particles(requested: int, device: str) -> int:
    return int(requested) if requested > 0 else DEVICE_DEFAULTS.get(device, DEVICE_DEFAULTS["cpu"]).max_particles


# --------------------------------------------------------------------------- this machine
def available_memory_mb() -> float | None:
    """Memory the system can give a new process now (Linux MemAvailable; physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def refusal(projection: Projection, limit_mb: float | None, fix: str) -> str | None:
    """The artist's message when the projected iteration will not fit in ``limit_mb``; None when it fits."""
    if limit_mb is None or projection.memory_mb * SAFETY <= limit_mb:
        return None
    return (f"This estimation would need {human_mb(projection.memory_mb)} per iteration but only "
            f"{human_mb(limit_mb)} of memory is free, so it would run out of memory. {fix}")


def what_fits(project_at, n_particles: int, width: int, height: int, limit_mb: float) -> tuple[int | None, int | None]:
    """(particles, long side) that would fit, each found alone by halving it (None when halving is not enough).

    ``project_at(n, width, height)`` is the caller's projection with everything else unchanged."""
    def fits(p: Projection) -> bool:
        return p.memory_mb * SAFETY <= limit_mb

    n_fit = next((m for m in (max(1, int(n_particles * 0.5 ** i)) for i in range(1, 16))
                  if fits(project_at(m, width, height))), None)
    long_fit = None
    for i in range(1, 9):
        w, h = capped_size(width, height, max(8, int(max(width, height) * 0.5 ** i)))
        if fits(project_at(n_particles, w, h)):
            long_fit = max(w, h)
            break
    return n_fit, long_fit


def fix_text(n_fit: int | None, long_fit: int | None, particles_name: str, resolution_name: str,
             where: str = "") -> str:
    """'To fit, set <particles> to N or fewer or set <resolution> to R px or less (where).'"""
    hints = ([f"set {particles_name} to {n_fit:,} or fewer"] if n_fit else []) + \
            ([f"set {resolution_name} to {long_fit} px or less"] if long_fit else [])
    text = ("To fit, " + " or ".join(hints)) if hints else \
        f"Lower both {particles_name} and {resolution_name}, or use a coarser grid"
    return text + (f" ({where})." if where else ".")


def human_mb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def human_seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.1f} s"
