"""The contract between the Blender add-on and the backend process.

Both sides import this module, so it uses only the standard library and numpy. It holds:

* the job schema (``job.json``) with its version, and validation with precise messages;
* the facts both sides share: enumerations (material models, boundary kinds, ...), the default
  video models, the material of points without one, and the stiffness summary (E percentiles);
* the array layouts of the job folder (``scene.npz``) and of the results;
* the progress events streamed as JSON lines on the backend's stdout;
* the exit codes;
* atomic write helpers, so a killed process never leaves half a file behind.

Layout of a job folder (all paths in ``job.json`` are relative to it)::

    job.json            command + settings (this schema)
    scene.npz           particle arrays, world space (SCENE_ARRAYS)
    CANCEL              created by the add-on to ask for a stop at the next safe point
    backend.lock        the PID and host of the run working on the folder (one run at a time)
    out/                results, each written atomically
        materials.npz   per-particle materials (MATERIAL_ARRAYS)
        frames/frame_000001.npz   one simulated frame each (FRAME_ARRAYS)
        sim_checkpoint.npz / estimate_checkpoint.npz   resume state: plain arrays + JSON, no pickles
        summary.json    settings, history, timing
        result.json     written last: what the run produced (its presence means success)
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .io.atomic import TEMP_MARKER, atomic_path, remove_own_temps
from .render.camera import Camera, CameraError  # numpy only
from .schema import REQUIRED, Choice, Flag, ListOf, Number, Rule, Section, SettingError, Text, Vector, bounds_text

SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------- files
JOB_FILE = "job.json"
SCENE_FILE = "scene.npz"
CANCEL_FILE = "CANCEL"
OUT_DIR = "out"
LOCK_FILE = "backend.lock"  # held by the run working on the folder: {"pid", "host", "started"}
MATERIALS_FILE = "materials.npz"
FRAMES_DIR = "frames"
SUMMARY_FILE = "summary.json"
RESULT_FILE = "result.json"
SIM_CHECKPOINT_FILE = "sim_checkpoint.npz"
ESTIMATE_CHECKPOINT_FILE = "estimate_checkpoint.npz"  # arrays + JSON (backend.io.statefile), never a pickle
PREVIEW_FILE = "preview.mp4"
PREVIEW_FRAMES_DIR = "preview_frames"  # lossless PNGs of the preview (usable as a reference video)
LOSS_PLOT_FILE = "loss.png"
LOG_FILE = "backend.log"


def frame_file_name(frame: int) -> str:
    """Name of one simulated frame's file inside ``out/frames``."""
    return f"frame_{frame:06d}.npz"


# ---------------------------------------------------------------------------- exit codes
class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: the log has the traceback
    BAD_INPUT = 2  # the job or its files are wrong; the message says what to fix
    CANCELLED = 3  # stopped on request; checkpoints kept, no partial outputs
    DIVERGED = 4  # the simulation blew up; the message suggests what to change
    MISSING_RESOURCE = 5  # a model's weights or a requested device are not available


EXIT_MEANINGS = {
    ExitCode.OK: "finished",
    ExitCode.INTERNAL: "the backend hit an internal error",
    ExitCode.BAD_INPUT: "the job's input is invalid",
    ExitCode.CANCELLED: "cancelled",
    ExitCode.DIVERGED: "the simulation diverged",
    ExitCode.MISSING_RESOURCE: "a model or device is missing",
}


class JobError(Exception):
    """An error with a user-facing message and the exit code it maps to."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadJob(JobError):
    exit_code = ExitCode.BAD_INPUT


class MissingResource(JobError):
    exit_code = ExitCode.MISSING_RESOURCE


class Cancelled(JobError):
    exit_code = ExitCode.CANCELLED

    def __init__(self, message: str = "cancelled by request"):
        super().__init__(message)


class Diverged(JobError):
    exit_code = ExitCode.DIVERGED


# ---------------------------------------------------------------------------- enumerations
MATERIAL_MODELS = (
    "fixed_corotated",
    "neo_hookean",
    "stvk_hencky",
    "von_mises",
    "drucker_prager",
    "foam",
    "plasticine",
    "snow",
)
COMMANDS = ("simulate", "estimate", "preview")
PRIORS = ("svd", "modelscope", "reference", "analytic")
CLIP_PRIORS = ("reference", "analytic")  # priors that compare with one clip (its own frame times); no video model
FIELDS = ("kan_triplane", "mlp_triplane", "per_particle", "global")
LOSSES = ("mds", "sds_t")
STOP_RULES = ("plateau", "decade")  # "arrived" (smoothed loss and E stopped moving) | the paper's one-decade rule
BOUNDARY_KINDS = ("sticky", "slip", "frictional")
DEVICES = ("auto", "cpu", "cuda")
BAKE_TARGETS = ("gn_cache", "ply_sequence", "pc2", "shape_keys")  # the Blender side's caches
FILL_AUTO = "auto"  # fill the interior only when the object is a closed-ish shell (backend/geometry/fill.py)
FILL_MODES = (FILL_AUTO, True, False)
# The video models a prior loads when the job names none (Hugging Face hub ids; weights never downloaded for you).
DEFAULT_MODELS = {"svd": "stabilityai/stable-video-diffusion-img2vid-xt", "modelscope": "ali-vilab/text-to-video-ms-1.7b"}
# The frame rate a video model judges clips at (SVD's fps micro-conditioning; ModelScope has none and sees the
# scene's rate): estimation samples the motion at it (backend/estimation/sampling.py).
PRIOR_FPS = {"svd": 7.0}

# The material of points the scene gives none for (Pa, dimensionless, kg/m^3); also the add-on's property defaults.
DEFAULT_E = 1.0e5
DEFAULT_NU = 0.3
DEFAULT_RHO = 1000.0


# ---------------------------------------------------------------------------- array layouts
@dataclass(frozen=True)
class ArraySpec:
    """Shape with -1 for N (the particle count) and None for "any length"."""

    shape: tuple
    kind: str  # numpy dtype kind accepted: "f" float, "i" int, "b" bool-ish (bool/uint8)
    required: bool
    finite: bool = True
    doc: str = ""
    bounds: tuple | None = None  # (lo, hi) every value must lie in; ends are inclusive unless open_bounds
    open_bounds: bool = False


N = -1
NU_LIMITS = (-1.0, 0.5)  # Poisson ratio of a stable isotropic solid (open interval), scene and estimate alike
# Splat inputs beyond these are not a real object: exp(log scale) squared or exp(-logit) would overflow float32.
POSITION_LIMIT = 1.0e6  # metres from the world origin
LOG_SCALE_LIMITS = (-30.0, 10.0)  # natural log of metres: 1e-13 m .. 22 km
OPACITY_LOGIT_LIMIT = 80.0
SH_LIMIT = 100.0  # spherical-harmonic colour coefficients
SPEED_LIMIT = 1.0e4  # m/s
# scene.npz, written by the add-on. N = number of points of the Blender object.
SCENE_ARRAYS: dict[str, ArraySpec] = {
    "positions": ArraySpec((N, 3), "f", True, doc="world-space centres, metres",
                           bounds=(-POSITION_LIMIT, POSITION_LIMIT)),
    "f_dc": ArraySpec((N, 3), "f", False, doc="SH DC colour coefficients", bounds=(-SH_LIMIT, SH_LIMIT)),
    "f_rest": ArraySpec((N, None), "f", False, doc="higher SH, channel-major as in 3DGS PLY",
                        bounds=(-SH_LIMIT, SH_LIMIT)),
    "opacity": ArraySpec((N,), "f", False, doc="opacity logit", bounds=(-OPACITY_LOGIT_LIMIT, OPACITY_LOGIT_LIMIT)),
    "scale": ArraySpec((N, 3), "f", False, doc="log scale, metres", bounds=LOG_SCALE_LIMITS),
    "rotation": ArraySpec((N, 4), "f", False, doc="unit quaternion, w first"),
    "youngs_modulus": ArraySpec((N,), "f", False, doc="Pa; the current or painted values", bounds=(0.0, math.inf),
                                open_bounds=True),
    "poisson_ratio": ArraySpec((N,), "f", False, doc="dimensionless", bounds=NU_LIMITS, open_bounds=True),
    "density": ArraySpec((N,), "f", False, doc="kg/m^3", bounds=(0.0, math.inf), open_bounds=True),
    "anchor": ArraySpec((N,), "b", False, doc="1 = fixed in place"),
    "material_lock": ArraySpec((N,), "b", False, doc="1 = estimation keeps the given E, nu, rho"),
    "material_id": ArraySpec((N,), "i", False, doc="constitutive model per point (MATERIAL_MODELS)",
                             bounds=(0, len(MATERIAL_MODELS) - 1)),
    "initial_velocity": ArraySpec((N, 3), "f", False, doc="m/s", bounds=(-SPEED_LIMIT, SPEED_LIMIT)),
}

# out/materials.npz
MATERIAL_ARRAYS: dict[str, ArraySpec] = {
    "youngs_modulus": ArraySpec((N,), "f", True, doc="Pa"),
    "poisson_ratio": ArraySpec((N,), "f", True),
    "density": ArraySpec((N,), "f", True, doc="kg/m^3"),
}

# out/frames/frame_XXXXXX.npz. Only the object's N points; interior fill particles are omitted.
FRAME_ARRAYS: dict[str, ArraySpec] = {
    "positions": ArraySpec((N, 3), "f", True, doc="world-space centres"),
    "rotations": ArraySpec((N, 4), "f", True, doc="wxyz: principal axes of the deformed covariance"),
    "scales": ArraySpec((N, 3), "f", True, doc="linear metres along those axes (A = R diag(s))"),
    "time": ArraySpec((), "f", True, doc="seconds since the simulation start"),
}

def check_arrays(arrays: Mapping[str, np.ndarray], specs: Mapping[str, ArraySpec], what: str) -> int:
    """Validate arrays against their specs; return N. Raises BadJob naming the array and the problem."""
    missing = [k for k, s in specs.items() if s.required and k not in arrays]
    if missing:
        raise BadJob(f"{what}: missing array(s) {', '.join(missing)}")
    n = None
    for name, spec in specs.items():
        if name not in arrays:
            continue
        a = np.asarray(arrays[name])
        ok_kind = a.dtype.kind == spec.kind or (spec.kind == "b" and a.dtype.kind in "bu")
        ok_kind = ok_kind or (spec.kind == "i" and a.dtype.kind == "u")
        if not ok_kind:
            raise BadJob(f"{what}: array '{name}' has dtype {a.dtype}, expected {_KIND_NAMES[spec.kind]}")
        if len(a.shape) != len(spec.shape):
            raise BadJob(f"{what}: array '{name}' has shape {a.shape}, expected {_shape_text(spec.shape)}")
        # Fixed dimensions first: "(5, 2), expected (N, 3)" says more than a row-count mismatch.
        if any(want not in (N, None) and got != want for got, want in zip(a.shape, spec.shape)):
            raise BadJob(f"{what}: array '{name}' has shape {a.shape}, expected {_shape_text(spec.shape)}")
        for got, want in zip(a.shape, spec.shape):
            if want == N:
                if n is None:
                    n = got
                elif got != n:
                    raise BadJob(f"{what}: array '{name}' has {got} rows but other arrays have {n}")
        if spec.finite and a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            bad = int(np.count_nonzero(~np.isfinite(a).reshape(a.shape[0], -1).all(axis=1))) if a.ndim else 1
            raise BadJob(f"{what}: array '{name}' has NaN or infinite values ({bad} of {a.shape[0] if a.ndim else 1} rows)")
        if spec.bounds is not None and a.size:
            _check_bounds(a, name, spec, what)
    return int(n or 0)


def _check_bounds(a: np.ndarray, name: str, spec: ArraySpec, what: str) -> None:
    """Name the first point with a value out of bounds, and the value."""
    lo, hi = spec.bounds
    bad = (a <= lo) | (a >= hi) if spec.open_bounds else (a < lo) | (a > hi)
    if not bad.any():
        return
    rows = bad.reshape(len(a), -1).any(axis=1)
    i = int(np.argmax(rows))
    value = a[i].reshape(-1)[np.argmax(bad[i].reshape(-1))]
    raise BadJob(f"{what}: '{name}' ({spec.doc}) of point {i} is {value:g}, outside "
                 f"{bounds_text(lo, hi, spec.open_bounds, spec.open_bounds)}"
                 f"{f' ({int(rows.sum())} points in all)' if rows.sum() > 1 else ''}")


_KIND_NAMES = {"f": "a float type", "i": "an integer type", "b": "bool or uint8"}


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("N" if s == N else "any" if s is None else str(s) for s in shape) + ")"


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load every array of an .npz without pickles; a clear BadJob if the file is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise BadJob(f"file not found: {path}") from None
    except Exception as exc:  # zipfile.BadZipFile, ValueError (pickled object arrays), OSError
        raise BadJob(f"cannot read {path}: {exc}") from None


def validate_scene(arrays: Mapping[str, np.ndarray]) -> int:
    """Validate scene arrays; return the number of points."""
    n = check_arrays(arrays, SCENE_ARRAYS, SCENE_FILE)
    if n == 0:
        raise BadJob(f"{SCENE_FILE}: the object has no points")
    return n


def check_scene_fits(job: "Job", arrays: Mapping[str, np.ndarray]) -> None:
    """The object must start inside the simulation domain the job gives (the solver's grid covers only it)."""
    lo, hi = job.simulation["domain_min"], job.simulation["domain_max"]
    if lo is None:
        return
    pos = np.asarray(arrays["positions"], np.float64)
    outside = ((pos < np.asarray(lo)) | (pos > np.asarray(hi))).any(axis=1)
    if outside.any():
        i = int(np.argmax(outside))
        raise BadJob(f"{int(outside.sum())} of {len(pos)} points lie outside the simulation domain "
                     f"{lo} .. {hi} (the first is point {i} at {pos[i].round(4).tolist()}); enlarge the domain "
                     "(simulation.domain_min / domain_max) or move the object into it")


# ---------------------------------------------------------------------------- job schema
# One typed definition of every setting the backend reads (backend/schema.py has the types). Adding a
# setting is one line here. The add-on writes a full job; a hand-written one may omit anything that has
# a default. Unknown keys are refused (typos must not pass silently). The job is validated once, in
# read_job, before anything heavy loads; the simulator, the fields and the priors trust it.
N_GRID_MAX = 512  # grid nodes per axis; 512^3 nodes already need about 10 GB of grid memory
FILL_RESOLUTION_MAX = 2 * N_GRID_MAX  # density-grid cells along the longest axis of the interior fill
GRID_PADDING = 3  # grid cells the solver keeps outside the domain on each side
N_GRID_MIN = 12  # with GRID_PADDING cells on each side, a smaller grid has no room inside
CFL = 0.3  # the automatic substep bound: dt <= CFL * dx / (c_p + v_max)


def sampling_fps(prior: str, scene_fps: float, clip_fps: float | None = None, model_fps: float | None = None) -> float:
    """The rate estimation samples the motion at (backend/estimation/sampling.py): a clip prior's clip rate,
    a video model's conditioning rate (model_fps: a loaded model's own), else the scene's. A clip prior's
    rate not known yet (clip_fps None: the add-on's projection before the file is read) is the scene's."""
    if prior in CLIP_PRIORS:
        return float(clip_fps or scene_fps)
    return float(model_fps or PRIOR_FPS.get(prior) or scene_fps)


def sampled_simulation(sim: dict, fps: float, n_frames: int | None = None) -> dict:
    """The simulation settings estimation runs with: the scene's, with frames at the sampling rate fps."""
    out = dict(sim, fps=float(fps), **({} if n_frames is None else {"n_frames": int(n_frames)}))
    if out.get("substep_dt"):  # a fixed substep never spans more than one rendered frame
        out["substep_dt"] = min(float(out["substep_dt"]), 1.0 / float(fps))
    return out


def p_wave_speed(E, nu, rho) -> np.ndarray:
    """P-wave speed sqrt((lambda + 2 mu) / rho) in m/s: what the CFL bound on the substep measures."""
    E, nu, rho = (np.asarray(a, dtype=np.float64) for a in (E, nu, rho))
    return np.sqrt(E * (1.0 - nu) / ((1.0 + nu) * (1.0 - 2.0 * nu) * rho))


MAX_FRAME = 1048574  # Blender's largest frame number
MAX_NESTING = 64  # job.json deeper than this is refused before it can exhaust the parser's stack
MAX_JOB_BYTES = 64 << 20  # a job.json larger than this is not a job (settings are a few kB)
CAMERA_KEYS = ("viewmat", "K", "width", "height")


def _window_rule(d: dict, key: str) -> None:
    if d["end"] is not None and d["end"] <= d["start"]:
        raise SettingError(f"{key}.end", f"= {d['end']!r} must be after its start ({d['start']!r}); "
                                         "a window of zero length does nothing")


def _domain_rule(d: dict, key: str) -> None:
    lo, hi = d["domain_min"], d["domain_max"]
    if (lo is None) != (hi is None):
        raise SettingError(f"{key}.domain_min", "and domain_max must be given together (or both left out)")
    if lo is not None and not all(a < b for a, b in zip(lo, hi)):
        raise SettingError(f"{key}.domain_max", f"= {hi} must exceed domain_min = {lo} on every axis")


def _substep_rule(d: dict, key: str) -> None:
    if d["substep_dt"] is not None and d["substep_dt"] > (1.0 / d["fps"]) * (1 + 1e-9):
        raise SettingError(f"{key}.substep_dt", f"= {d['substep_dt']!r} must not exceed the frame time "
                                                f"1/fps = {1.0 / d['fps']:g} s")


def _keyframes_rule(d: dict, key: str) -> None:
    times, centers = d["times"], d["centers"]
    if not times:
        raise SettingError(f"{key}.times", "needs at least one keyframe")
    if len(centers) != len(times):
        raise SettingError(f"{key}.centers", f"has {len(centers)} entries but times has {len(times)}")
    if any(b <= a for a, b in zip(times, times[1:])):
        raise SettingError(f"{key}.times", f"= {times} must be strictly increasing")


def _range_rule(name: str, lo: float, hi: float, lo_open: bool = True, hi_open: bool = True, unit: str = "") -> Rule:
    """A [low, high] pair that must satisfy lo (<|<=) low < high (<|<=) hi."""
    def rule(d: dict, key: str) -> None:
        a, b = d[name]
        ok_lo = a > lo if lo_open else a >= lo
        ok_hi = b < hi if hi_open else b <= hi
        if not (ok_lo and a < b and ok_hi):
            raise SettingError(f"{key}.{name}", f"= {d[name]} must be low < high inside "
                                                f"{bounds_text(lo, hi, lo_open, hi_open)}{unit}")
    return rule


def _fill_rule(d: dict, key: str) -> None:
    if 0 < d["resolution"] < 8:
        raise SettingError(f"{key}.resolution", f"= {d['resolution']} must be 0 (automatic) or at least 8")


def _camera_rule(d: dict, key: str) -> None:
    """The camera class holds what makes a camera usable (positive focal lengths, near < far, ...)."""
    try:
        Camera.from_dict(d)
    except CameraError as exc:
        raise SettingError(key, f"is not usable: {exc}") from None


def _ladder_rule(d: dict, key: str) -> None:
    if d["ladder_rungs"] == 1:
        raise SettingError(f"{key}.ladder_rungs", "= 1 must be 0 (off), null (automatic) or at least 2")


_FRICTION = Number(0.3, lo=0.0, hi=10.0, doc="Coulomb coefficient (frictional boundaries)")
_START = Number(0.0, lo=0.0, doc="seconds after the simulation start")
_END = Number(None, lo=0.0, optional=True, doc="seconds; null = until the end")
_POSITIVE = Number(lo=0.0, lo_open=True)

SIMULATION = Section(doc="the simulation (bake and estimation alike)", rules=(_domain_rule, _substep_rule), fields={
    "n_grid": Number(64, lo=N_GRID_MIN, hi=N_GRID_MAX, integer=True, doc="grid nodes per axis of the cubic grid"),
    "domain_min": Vector(None, optional=True, doc="world AABB corner (m); null = the object's bounds, enlarged"),
    "domain_max": Vector(None, optional=True, doc="world AABB corner (m), with domain_min"),
    "fps": Number(24.0, lo=1e-3, hi=1e4, doc="output frames per second"),
    "n_frames": Number(48, lo=1, hi=100000, integer=True, doc="frames to write, the rest state first"),
    "frame_start": Number(1, lo=-MAX_FRAME, hi=MAX_FRAME, integer=True, doc="Blender frame of the first frame"),
    "substep_dt": Number(None, lo=0.0, hi=1.0, lo_open=True, optional=True, doc="seconds; null = automatic (CFL)"),
    "gravity": Vector([0.0, 0.0, -9.81], doc="m/s^2, world"),
    "material_model": Choice("fixed_corotated", choices=MATERIAL_MODELS, doc="for points without material_id"),
    "walls": Section(doc="the domain's faces", fields={
        "kind": Choice("slip", choices=BOUNDARY_KINDS), "friction": _FRICTION}),
    "ground": Section(default_none=True, optional=True, doc="horizontal plane; null = none", fields={
        "height": Number(0.0, doc="world z (m)"), "kind": Choice("frictional", choices=BOUNDARY_KINDS),
        "friction": Number(0.5, lo=0.0, hi=10.0)}),
    "fill": Section(doc="interior fill of hollow splat shells", fields={
        "enabled": Choice(FILL_AUTO, choices=FILL_MODES, doc='"auto": closed-ish shells only; true: always; false: never'),
        "max_particles": Number(200000, lo=0, hi=1e8, integer=True),
        "resolution": Number(0, lo=0, hi=FILL_RESOLUTION_MAX, integer=True, doc="voxels per axis; 0 = twice n_grid")},
        rules=(_fill_rule,)),
    "pokes": ListOf(doc="pushes on the particles inside a sphere", item=Section(rules=(_window_rule,), fields={
        "center": Vector(REQUIRED, doc="m, world"), "radius": Number(REQUIRED, lo=0.0, lo_open=True, doc="m"),
        "direction": Vector(REQUIRED, nonzero=True), "strength": Number(REQUIRED, lo=0.0, doc="m/s^2"),
        "start": _START, "end": _END})),
    "winds": ListOf(doc="uniform accelerations with gusts", item=Section(rules=(_window_rule,), fields={
        "direction": Vector(REQUIRED, nonzero=True), "strength": Number(REQUIRED, lo=0.0, doc="m/s^2"),
        "gust_frequency": Number(0.0, lo=0.0, doc="Hz"), "gust_amplitude": Number(0.0, lo=0.0, hi=1.0),
        "start": _START, "end": _END})),
    "colliders": ListOf(doc="kinematic boxes following keyframes", item=Section(rules=(_keyframes_rule,), fields={
        "times": ListOf(REQUIRED, item=Number(), doc="seconds, increasing"),
        "centers": ListOf(REQUIRED, item=Vector(), doc="m, one per time"),
        "half_extents": Vector(REQUIRED, element=_POSITIVE, doc="m"),
        "kind": Choice("sticky", choices=BOUNDARY_KINDS), "friction": _FRICTION})),
    "plasticity": Section(doc="parameters of the plastic models", fields={
        "yield_stress": Number(1.0e4, lo=0.0, doc="Pa (von Mises, foam, plasticine)"),
        "hardening": Number(0.0, lo=0.0), "softening": Number(0.5, lo=0.0),
        "viscosity": Number(10.0, lo=0.0, doc="Pa s (foam)"),
        "friction_angle_deg": Number(30.0, lo=0.0, hi=89.0, doc="Drucker-Prager"),
        "cohesion": Number(0.0, lo=0.0), "snow_theta_c": Number(2.5e-2, lo=0.0, hi=0.99),
        "snow_theta_s": Number(7.5e-3, lo=0.0), "snow_hardening": Number(10.0, lo=0.0)}),
    "damping": Number(0.0, lo=0.0, hi=1e4, doc="grid velocity damping rate, 1/s"),
    "max_substeps_per_frame": Number(10000, lo=1, hi=1e7, integer=True,
                                     doc="a bake whose stable step needs more is refused before it starts"),
    "rest_state": Section(doc="the captured shape as the equilibrium under gravity (backend/mpm/rest.py)", fields={
        "enabled": Flag(None, optional=True, doc="null = on when gravity is on and something holds the object"),
        # 2e-3: an object released this far from its equilibrium swings at most twice as far, 0.4% of its size
        "tolerance": Number(2.0e-3, lo=1e-7, hi=0.5, doc="drift left, as a fraction of the object's size"),
        "max_iterations": Number(8, lo=1, hi=100, integer=True, doc="quasi-static solves at most"),
        "max_substeps": Number(200000, lo=1, hi=1e9, integer=True, doc="substeps over all of its solves")}),
    "threads": Number(None, lo=1, hi=256, integer=True, optional=True,
                      doc="CPU threads of the simulation; null = the usable cores (1 = one thread)"),
})

ESTIMATE = Section(doc="material estimation", rules=(
    _ladder_rule,
    _range_rule("t_range", 0.0, 1.0, lo_open=False, hi_open=False),
    _range_rule("E_range", 0.0, math.inf, hi_open=True, unit=" Pa"),
    _range_rule("nu_range", *NU_LIMITS)), fields={
    "prior": Choice("reference", choices=PRIORS, doc="what judges the rendered motion"),
    "model": Text("", doc="hub id or local folder of the diffusers model (read only)"),
    "prompt": Text("", doc="the motion, for the text-to-video prior"),
    "negative_prompt": Text(""),
    "reference_video": Text("", doc="file or folder, relative to the job folder or absolute (read only)"),
    "reference_fps": Number(None, lo=0.0, lo_open=True, hi=1e4, optional=True,
                            doc="the clip's frames per second; null = read from the clip (a bare frame folder needs it)"),
    "loss": Choice("mds", choices=LOSSES),
    "field": Choice("kan_triplane", choices=FIELDS),
    "estimate_density": Flag(False, doc="learn density too (E and density only move the object through their ratio)"),
    "learn_nu": Flag(False, doc="learn Poisson's ratio; off: a sway or wobble hardly shows it, the scene's values stay"),
    "iterations": Number(30, lo=1, hi=100000, integer=True, doc="at most"),
    "stop_rule": Choice("plateau", choices=STOP_RULES, doc="plateau: the loss and E stopped moving; decade: the "
                        "paper's rule (E percentiles within tolerance_decades over 3 iterations)"),
    "stop_window": Number(6, lo=3, hi=1000, integer=True, doc="iterations the plateau rule fits its trend line over"),
    "stop_tolerance": Number(0.02, lo=1e-6, hi=1, doc="plateau rule: largest relative change of loss and E"),
    "min_iterations": Number(10, lo=0, hi=100000, integer=True, doc="gradient steps before any stop rule may stop"),
    "tolerance_decades": Number(1.0, lo=1e-6, hi=10, doc="decade rule only"),
    "ladder_rungs": Number(None, lo=0, hi=100, integer=True, optional=True, doc="log-E values tried (forward only) "
                           "before the descent; null = automatic (reference clips only), 0 = off"),
    "ladder_regions": Number(2, lo=1, hi=16, integer=True, doc="regions the ladder tunes one by one (spatial fields)"),
    "learning_rate": Number(None, lo=1e-8, hi=10, optional=True, doc="null = the field's own default"),
    "frames_per_group": Number(8, lo=1, hi=1000, integer=True, doc="T"),
    "boost_groups": Number(1, lo=1, hi=100, integer=True, doc="M (frame boosting)"),
    "cfg_scale": Number(100.0, lo=0.0, hi=1000),
    "t_range": Vector([0.02, 0.98], shape=(2,), doc="diffusion time range"),
    "anneal_t": Flag(False),
    "bptt_substeps": Number(None, lo=1, hi=1e6, integer=True, optional=True, doc="null = the whole frame"),
    "E_range": Vector([1.0e3, 1.0e8], shape=(2,), doc="Pa"),
    "nu_range": Vector([0.05, 0.45], shape=(2,)),
    "camera": Section(default_none=True, optional=True, rules=(_camera_rule,), doc="the view the video is "
                      "rendered from", fields={
        "viewmat": Vector(REQUIRED, shape=(4, 4)), "K": Vector(REQUIRED, shape=(3, 3)),
        "width": Number(REQUIRED, lo=8, hi=8192, integer=True), "height": Number(REQUIRED, lo=8, hi=8192, integer=True),
        "near": Number(0.01, lo=0.0, lo_open=True), "far": Number(1e10, lo=0.0, lo_open=True)}),
    "orbit_degrees": Number(0.0, lo=-3600, hi=3600, doc="0 = fixed camera"),
    "seed": Number(0, lo=0, hi=2**32 - 1, integer=True),
    "max_particles": Number(0, lo=0, hi=1e9, integer=True, doc="simulate a voxel subsample while estimating; 0 = all"),
    "memory_limit_mb": Number(0, lo=0, hi=1e9, doc="refuse (exit 2) when one iteration is projected above this; "
                                                   "0 = the memory free on the machine (backend/estimation/budget.py)"),
})

JOB = Section(fields={
    "schema_version": Number(SCHEMA_VERSION, integer=True),
    "command": Choice(REQUIRED, choices=COMMANDS),
    "scene": Text(SCENE_FILE, doc="inside the job folder"),
    "device": Choice("auto", choices=DEVICES),
    "output": Text(OUT_DIR, doc="inside the job folder"),
    "label": Text(""),
    "simulation": SIMULATION,
    "estimate": ESTIMATE,
})
TOP_LEVEL_KEYS = set(JOB.fields)
SIMULATION_DEFAULTS: dict[str, Any] = SIMULATION.defaults()
ESTIMATE_DEFAULTS: dict[str, Any] = ESTIMATE.defaults()


@dataclass
class Job:
    """A validated job. Paths are absolute and inside the job folder (except read-only inputs)."""

    folder: Path
    command: str
    scene_path: Path
    output_dir: Path
    device: str
    simulation: dict
    estimate: dict
    label: str = ""

    @property
    def cancel_path(self) -> Path:
        return self.folder / CANCEL_FILE


def default_job(command: str, **sections: dict) -> dict:
    """A complete job dict with defaults, for writers (the add-on, the demo, tests)."""
    job = JOB.default_value()
    job.update(command=command, simulation=SIMULATION.defaults(), estimate=ESTIMATE.defaults())
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(job.get(name), dict):
            job[name].update(values)
        else:
            job[name] = values
    return job


def read_job(folder: str | os.PathLike) -> Job:
    """Read and validate ``job.json`` in ``folder``. Raises BadJob with one precise message."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadJob(f"job folder not found: {folder}")
    path = folder / JOB_FILE
    try:
        if path.stat().st_size > MAX_JOB_BYTES:
            raise BadJob(f"{JOB_FILE} is {path.stat().st_size >> 20} MB; a job is a few kB, so this is not one")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadJob(f"no {JOB_FILE} in {folder}") from None
    except UnicodeDecodeError as exc:
        raise BadJob(f"{JOB_FILE} is not UTF-8 text: {exc}") from None
    except OSError as exc:
        raise BadJob(f"cannot read {path}: {exc.strerror or exc}") from None
    _check_nesting(text)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadJob(f"{JOB_FILE} is not valid JSON: {exc}") from None
    return validate_job(raw, folder)


def _check_nesting(text: str) -> None:
    """Refuse absurdly nested JSON before parsing it (the parser would recurse until it crashes)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_NESTING:
                raise BadJob(f"{JOB_FILE} is nested more than {MAX_NESTING} levels deep; it is not a job")
        elif ch in "]}":
            depth -= 1


def validate_job(raw: Any, folder: Path) -> Job:
    if not isinstance(raw, dict):
        raise BadJob(f"{JOB_FILE} must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BadJob(
            f"{JOB_FILE} has schema_version {version!r}, but this backend reads version {SCHEMA_VERSION}; "
            "update the add-on and the backend together"
        )
    try:
        job = _check_setting(JOB, raw)
        _check_command_needs(job, folder)
    except SettingError as exc:
        raise BadJob(f"{JOB_FILE}: {exc}") from None
    scene_path = confined_path(folder, job["scene"], "scene")
    if not scene_path.is_file():
        raise BadJob(f"scene file not found: {scene_path}")
    output = confined_path(folder, job["output"], "output")
    return Job(folder, job["command"], scene_path, output, job["device"], job["simulation"], job["estimate"],
               job["label"])


def _check_setting(spec: Section, raw: dict) -> dict:
    """The whole job, key by key; section names lead the dotted keys (``simulation.pokes[0].end``)."""
    unknown = sorted(set(raw) - set(spec.fields))
    if unknown:
        raise SettingError("job", f"has unknown key(s) {', '.join(map(str, unknown))}")
    return {name: sub.check(raw[name] if name in raw else sub.default_value(), name)
            for name, sub in spec.fields.items()}


def _check_command_needs(job: dict, folder: Path) -> None:
    """Settings a command needs that others do not (a prior's model, the estimation camera)."""
    e = job["estimate"]
    if job["command"] == "estimate":
        check_prior_needs(e, folder)
    if job["command"] in ("estimate", "preview") and e["camera"] is None:
        raise SettingError("estimate.camera", "is needed (the view the video is rendered from)")


def check_prior_needs(e: dict, folder: Path) -> None:
    """What the estimate's prior needs (a prompt, a model, a reference video): the add-on asks before writing."""
    if e["prior"] == "modelscope" and not e["prompt"].strip():
        raise SettingError("estimate.prompt", "is empty: the text-to-video prior needs a prompt describing the "
                                              "motion, e.g. 'a red flower swaying in the wind'")
    if e["prior"] in ("svd", "modelscope") and not e["model"].strip():
        raise SettingError("estimate.model", "must name a hub id or a local model folder")
    if e["prior"] in CLIP_PRIORS:
        if not e["reference_video"]:
            raise SettingError("estimate.reference_video", f"is needed by the {e['prior']} prior")
        path = input_path(folder, e["reference_video"])
        if not path.exists():
            raise BadJob(f"reference video not found: {path}")
    if e["prior"] != "reference" and e["boost_groups"] > 1 and e["frames_per_group"] < 2:
        raise SettingError("estimate.frames_per_group", "must be at least 2 for frame boosting (boost_groups > 1)")


def input_path(folder: Path, value: str) -> Path:
    """A file the user names as input (reference clip, model folder): relative to the job folder, or absolute.
    Inputs are only ever read."""
    if "\x00" in value:
        raise BadJob(f"{JOB_FILE}: the path {value!r:.80} holds a NUL character")
    p = Path(value).expanduser()
    return p if p.is_absolute() else folder / p


def confined_path(folder: Path, value: str, key: str) -> Path:
    """A path of job.json that must stay inside the job folder: relative, no '..', no symlink leading out."""
    if not value or "\x00" in value:
        raise BadJob(f"{JOB_FILE}: '{key}' must be a non-empty path without NUL characters")
    p = Path(value)
    if p.is_absolute() or p.drive or ".." in p.parts or "\\" in value:
        raise BadJob(f"{JOB_FILE}: '{key}' = {value!r:.200} must be a path inside the job folder "
                     "(relative, without '..')")
    target = folder / p
    try:
        for i in range(1, len(p.parts) + 1):
            if (folder / Path(*p.parts[:i])).is_symlink():
                raise BadJob(f"{JOB_FILE}: '{key}' = {value!r}: {Path(*p.parts[:i])} in the job folder is a "
                             "symbolic link; the backend reads and writes only real files inside the job folder")
    except OSError as exc:  # e.g. a name too long for the file system
        raise BadJob(f"{JOB_FILE}: '{key}' = {value!r:.80} is not a usable path ({exc.strerror})") from None
    return target


def check_output_tree(output_dir: Path) -> None:
    """Nothing in the output folder may be a symbolic link: a write or cleanup through one would reach outside
    the job folder (a job folder from elsewhere is untrusted)."""
    if output_dir.is_symlink():
        raise BadJob(f"the output folder {output_dir} is a symbolic link; the backend writes only inside the job folder")
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise BadJob(f"the output folder {output_dir} is a file, not a folder")
    for root, dirs, files in os.walk(output_dir):  # does not descend into linked folders
        for name in dirs + files:
            if os.path.islink(os.path.join(root, name)):
                link = Path(root, name)
                raise BadJob(f"{link} is a symbolic link; the backend writes only inside the job folder. "
                             "Remove it (or the whole output folder) and run again")


# ---------------------------------------------------------------------------- the stiffness summary
# How an estimate sums up per-point Young's moduli (progress events, result.json, the batch table, the panel):
# key -> percentile of E.
E_PERCENTILES = {"E_p5": 5.0, "E_p50": 50.0, "E_p95": 95.0}


def e_percentiles(E) -> dict[str, float]:
    """The stiffness summary (Pa) of per-point Young's moduli, computed in their own float type."""
    values = np.percentile(np.asarray(E).ravel(), list(E_PERCENTILES.values()))
    return {k: float(v) for k, v in zip(E_PERCENTILES, values)}


# ---------------------------------------------------------------------------- progress events
EVENT_KINDS = ("start", "stage", "progress", "warning", "result", "error")


@dataclass
class Event:
    """One line of the backend's stdout.

    kind: start | stage | progress | warning | result | error
    stage: what is running ("load", "fill", "simulate", "estimate", "write", ...)
    step/total: progress within the stage (iteration, frame)
    loss, eta_s: where known
    message: one human sentence
    data: small extra values (E percentiles, exit code, file names)
    """

    kind: str
    stage: str = ""
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    eta_s: float | None = None
    message: str = ""
    data: dict = field(default_factory=dict)
    t: float = field(default_factory=time.time)

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if v is not None and v != {} and v != ""}
        d["kind"] = self.kind
        return json.dumps(_finite(d), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> "Event":
        d = json.loads(line)
        if not isinstance(d, dict) or d.get("kind") not in EVENT_KINDS:
            raise ValueError(f"not a progress event: {line[:200]!r}")
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total:
            return None
        return max(0.0, min(1.0, self.step / self.total))


def _finite(value: Any) -> Any:
    """JSON has no NaN: map non-finite floats to None so every line stays parseable."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        return _finite(value.item())
    return value


# ---------------------------------------------------------------------------- atomic writes
def _atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> Path:
    """Write through a hidden temp file in the same folder, then rename over the target (io.atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return _atomic(path, lambda f: f.write(text.encode("utf-8")), "wb")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(_finite(obj), indent=2, ensure_ascii=False) + "\n")


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """np.savez to a temp file then rename; the target keeps its exact name (no '.npz' appended).

    The archive is built in memory first: np.savez leaves its zip writer open when a write fails (a full
    disk), and the writer's destructor then fails again with a traceback on stderr."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return _atomic(path, lambda f: f.write(buffer.getbuffer()), "wb")


def remove_temp_files(output_dir: str | os.PathLike) -> int:
    """Delete leftovers of our atomic writes interrupted by a kill: only our own temp names (io.atomic), only
    in the folders the backend writes (the output folder and its frame folders). Returns how many."""
    out = Path(output_dir)
    return sum(remove_own_temps(d) for d in (out, out / FRAMES_DIR, out / PREVIEW_FRAMES_DIR))


def write_job(folder: str | os.PathLike, job: dict, scene: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ``job.json`` (and ``scene.npz`` if given) into ``folder`` atomically. Used by the add-on and tests."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if scene is not None:
        atomic_save_npz(folder / job.get("scene", SCENE_FILE), **scene)
    atomic_write_json(folder / JOB_FILE, job)
    return folder


def arrays_fingerprint(arrays: Mapping[str, np.ndarray], settings: Any = None) -> str:
    """A hash of array contents (names, dtypes, shapes, bytes) and settings: equal for equal inputs,
    whatever the container file's timestamps. Resume checks use it."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:32]


# ---------------------------------------------------------------------------- batch manifest
# A list of job folders for ``python -m backend batch`` (written by the add-on's Write Jobs for a Farm).
# Folders are relative to the manifest's own folder, so the whole tree can move to shared storage.
MANIFEST_KIND = "splat_physics.batch"


def write_manifest(path: str | os.PathLike, folders: Iterable[tuple[str | os.PathLike, str]]) -> Path:
    """Write a manifest of (job folder, label) pairs atomically; folders are stored relative to it."""
    path = Path(path)
    jobs = [{"folder": Path(os.path.relpath(Path(f).resolve(), path.parent.resolve())).as_posix(), "label": label}
            for f, label in folders]
    return atomic_write_json(path, {"schema_version": SCHEMA_VERSION, "kind": MANIFEST_KIND, "jobs": jobs})


def read_manifest(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """(absolute job folder, label) pairs of a manifest. Raises BadJob naming what is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadJob(f"manifest not found: {path}") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadJob(f"manifest {path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("kind") != MANIFEST_KIND or not isinstance(raw.get("jobs"), list):
        raise BadJob(f"{path} is not a batch manifest (expected kind {MANIFEST_KIND!r} and a 'jobs' list)")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise BadJob(f"manifest {path} has schema_version {raw.get('schema_version')!r}; this backend reads "
                     f"version {SCHEMA_VERSION}")
    out = []
    for i, entry in enumerate(raw["jobs"]):
        folder = entry.get("folder") if isinstance(entry, dict) else None
        if not isinstance(folder, str) or not folder:
            raise BadJob(f"manifest {path}: jobs[{i}] needs a 'folder' path string")
        out.append(((path.parent / folder).resolve(), str(entry.get("label", ""))))
    return out


def iter_frame_files(out_dir: str | os.PathLike) -> Iterable[Path]:
    """The finished frame files of a simulation, in frame order."""
    d = Path(out_dir) / FRAMES_DIR
    return sorted(d.glob("frame_*.npz")) if d.is_dir() else []
