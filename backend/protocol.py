"""The contract between the Blender add-on and the backend process.

Both sides import this module, so it uses only the standard library and numpy. It holds:

* the job schema (``job.json``) with its version, and validation with precise messages;
* the array layouts of the job folder (``scene.npz``) and of the results;
* the progress events streamed as JSON lines on the backend's stdout;
* the exit codes;
* atomic write helpers, so a killed process never leaves half a file behind.

Layout of a job folder (all paths in ``job.json`` are relative to it)::

    job.json            command + settings (this schema)
    scene.npz           particle arrays, world space (SCENE_ARRAYS)
    CANCEL              created by the add-on to ask for a stop at the next safe point
    out/                results, each written atomically
        materials.npz   per-particle materials (MATERIAL_ARRAYS)
        frames/frame_000001.npz   one simulated frame each (FRAME_ARRAYS)
        checkpoint.npz / estimate_ckpt.pt   resume state
        summary.json    settings, history, timing
        result.json     written last: what the run produced (its presence means success)
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .io.atomic import TEMP_MARKER, atomic_path

SCHEMA_VERSION = 1

# ---------------------------------------------------------------------------- files
JOB_FILE = "job.json"
SCENE_FILE = "scene.npz"
CANCEL_FILE = "CANCEL"
OUT_DIR = "out"
MATERIALS_FILE = "materials.npz"
FRAMES_DIR = "frames"
SUMMARY_FILE = "summary.json"
RESULT_FILE = "result.json"
SIM_CHECKPOINT_FILE = "sim_checkpoint.npz"
ESTIMATE_CHECKPOINT_FILE = "estimate_checkpoint.pt"
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


# ---------------------------------------------------------------------------- array layouts
@dataclass(frozen=True)
class ArraySpec:
    """Shape with -1 for N (the particle count) and None for "any length"."""

    shape: tuple
    kind: str  # numpy dtype kind accepted: "f" float, "i" int, "b" bool-ish (bool/uint8)
    required: bool
    finite: bool = True
    doc: str = ""


N = -1
# scene.npz, written by the add-on. N = number of points of the Blender object.
SCENE_ARRAYS: dict[str, ArraySpec] = {
    "positions": ArraySpec((N, 3), "f", True, doc="world-space centres, metres"),
    "f_dc": ArraySpec((N, 3), "f", False, doc="SH DC colour coefficients"),
    "f_rest": ArraySpec((N, None), "f", False, doc="higher SH, channel-major as in 3DGS PLY"),
    "opacity": ArraySpec((N,), "f", False, doc="opacity logit"),
    "scale": ArraySpec((N, 3), "f", False, doc="log scale, metres"),
    "rotation": ArraySpec((N, 4), "f", False, doc="unit quaternion, w first"),
    "youngs_modulus": ArraySpec((N,), "f", False, doc="Pa; the current or painted values"),
    "poisson_ratio": ArraySpec((N,), "f", False, doc="dimensionless"),
    "density": ArraySpec((N,), "f", False, doc="kg/m^3"),
    "anchor": ArraySpec((N,), "b", False, doc="1 = fixed in place"),
    "material_lock": ArraySpec((N,), "b", False, doc="1 = estimation keeps the given E, nu, rho"),
    "material_id": ArraySpec((N,), "i", False, doc="constitutive model per point (MATERIAL_MODELS)"),
    "initial_velocity": ArraySpec((N, 3), "f", False, doc="m/s"),
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
FIELDS = ("kan_triplane", "mlp_triplane", "per_particle", "global")
LOSSES = ("mds", "sds_t")
STOP_RULES = ("plateau", "decade")  # "arrived" (smoothed loss and E stopped moving) | the paper's one-decade rule
BOUNDARY_KINDS = ("sticky", "slip", "frictional")
DEVICES = ("auto", "cpu", "cuda")


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
    return int(n or 0)


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
    for name, lo, hi in (("youngs_modulus", 0.0, None), ("density", 0.0, None), ("poisson_ratio", -1.0, 0.5)):
        if name in arrays:
            a = np.asarray(arrays[name])
            if np.any(a <= lo) or (hi is not None and np.any(a >= hi)):
                bound = f"in ({lo}, {hi})" if hi is not None else f"> {lo}"
                raise BadJob(f"{SCENE_FILE}: '{name}' must be {bound}; got range [{a.min():g}, {a.max():g}]")
    if "material_id" in arrays:
        ids = np.asarray(arrays["material_id"])
        if ids.size and (ids.min() < 0 or ids.max() >= len(MATERIAL_MODELS)):
            raise BadJob(f"{SCENE_FILE}: 'material_id' must be in 0..{len(MATERIAL_MODELS) - 1}")
    return n


# ---------------------------------------------------------------------------- job schema
# Defaults of every setting the backend reads. The add-on writes a full job; a hand-written one may omit
# anything that has a default here. Keys not listed here are rejected (typos must not pass silently).
SIMULATION_DEFAULTS: dict[str, Any] = {
    "n_grid": 64,
    "domain_min": None,  # world AABB; None = the object's bounds, enlarged
    "domain_max": None,
    "fps": 24.0,
    "n_frames": 48,
    "frame_start": 1,  # Blender frame number of the first output frame
    "substep_dt": None,  # None = automatic (CFL)
    "gravity": [0.0, 0.0, -9.81],
    "material_model": "fixed_corotated",
    "walls": {"kind": "slip", "friction": 0.3},
    "ground": None,  # {"height": z, "kind": ..., "friction": ...}
    "fill": {"enabled": False, "max_particles": 200000, "resolution": 0},
    "pokes": [],  # {"center", "radius", "direction", "strength" (m/s^2), "start", "end" (s)}
    "winds": [],  # {"direction", "strength" (m/s^2), "gust_frequency" (Hz), "gust_amplitude", "start", "end"}
    "colliders": [],  # {"times", "centers", "half_extents", "kind", "friction"}
    "plasticity": {},
    "damping": 0.0,
}

CAMERA_KEYS = ("viewmat", "K", "width", "height")

ESTIMATE_DEFAULTS: dict[str, Any] = {
    "prior": "reference",
    "model": "",  # hub id or local folder of the diffusers model
    "prompt": "",
    "negative_prompt": "",
    "reference_video": "",  # file or folder (relative to the job folder, or absolute)
    "loss": "mds",
    "field": "kan_triplane",
    "estimate_density": False,  # learn density too (E and density only move the object through their ratio)
    "learn_nu": False,  # a sway or wobble hardly shows Poisson's ratio: held at the scene's values unless asked
    "iterations": 30,  # at most
    "stop_rule": "plateau",  # see STOP_RULES
    "stop_window": 6,  # iterations the plateau rule fits its trend line over
    "stop_tolerance": 0.02,  # plateau rule: largest relative change of loss and E along that trend
    "min_iterations": 10,  # gradient steps before any stop rule may end the run
    "tolerance_decades": 1.0,  # decade rule only: E percentiles within this many decades over 3 iterations
    "ladder_rungs": None,  # log-E values tried (forward only) before the descent; None = auto, 0 = off
    "ladder_regions": 2,  # spatial regions the ladder tunes one by one for spatially varying fields
    "learning_rate": None,  # None = the field's own default (triplanes need far smaller steps)
    "frames_per_group": 8,  # T
    "boost_groups": 1,  # M (frame boosting)
    "cfg_scale": 100.0,
    "t_range": [0.02, 0.98],
    "anneal_t": False,
    "bptt_substeps": None,  # None = the whole frame
    "E_range": [1.0e3, 1.0e8],
    "nu_range": [0.05, 0.45],
    "camera": None,  # {"viewmat": 4x4, "K": 3x3, "width", "height"}
    "orbit_degrees": 0.0,  # 0 = fixed camera
    "seed": 0,
    "max_particles": 0,  # simulate a voxel subsample of at most this many points while estimating (0 = all)
}

TOP_LEVEL_KEYS = {"schema_version", "command", "scene", "device", "simulation", "estimate", "output", "label"}


@dataclass
class Job:
    """A validated job. Paths are absolute."""

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
    job = {
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "scene": SCENE_FILE,
        "device": "auto",
        "output": OUT_DIR,
        "simulation": json.loads(json.dumps(SIMULATION_DEFAULTS)),
        "estimate": json.loads(json.dumps(ESTIMATE_DEFAULTS)),
    }
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
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadJob(f"no {JOB_FILE} in {folder}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadJob(f"{JOB_FILE} is not valid JSON: {exc}") from None
    return validate_job(raw, folder)


def validate_job(raw: Any, folder: Path) -> Job:
    if not isinstance(raw, dict):
        raise BadJob(f"{JOB_FILE} must hold a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BadJob(
            f"{JOB_FILE} has schema_version {version!r}, but this backend reads version {SCHEMA_VERSION}; "
            "update the add-on and the backend together"
        )
    unknown = set(raw) - TOP_LEVEL_KEYS
    if unknown:
        raise BadJob(f"{JOB_FILE}: unknown key(s) {', '.join(sorted(unknown))}")
    command = raw.get("command")
    if command not in COMMANDS:
        raise BadJob(f"{JOB_FILE}: 'command' must be one of {', '.join(COMMANDS)}; got {command!r}")
    device = raw.get("device", "auto")
    if device not in DEVICES:
        raise BadJob(f"{JOB_FILE}: 'device' must be one of {', '.join(DEVICES)}; got {device!r}")
    scene_path = _job_path(folder, raw.get("scene", SCENE_FILE), "scene")
    if not scene_path.is_file():
        raise BadJob(f"scene file not found: {scene_path}")
    output = _job_path(folder, raw.get("output", OUT_DIR), "output")
    sim = _merge_section(raw.get("simulation", {}), SIMULATION_DEFAULTS, "simulation")
    est = _merge_section(raw.get("estimate", {}), ESTIMATE_DEFAULTS, "estimate")
    _check_simulation(sim)
    if command == "estimate":
        _check_estimate(est, folder)
    if command in ("estimate", "preview"):
        _check_camera(est)
    return Job(folder, command, scene_path, output, device, sim, est, str(raw.get("label", "")))


def _job_path(folder: Path, value: Any, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise BadJob(f"{JOB_FILE}: '{key}' must be a non-empty path string")
    p = Path(value)
    return p if p.is_absolute() else folder / p


def _merge_section(given: Any, defaults: dict, name: str) -> dict:
    if not isinstance(given, dict):
        raise BadJob(f"{JOB_FILE}: '{name}' must be an object")
    unknown = set(given) - set(defaults)
    if unknown:
        raise BadJob(f"{JOB_FILE}: unknown {name} setting(s) {', '.join(sorted(unknown))}")
    merged = json.loads(json.dumps(defaults))
    merged.update(given)
    return merged


def _number(section: str, key: str, value: Any, lo: float | None = None, hi: float | None = None,
            integer: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise BadJob(f"{JOB_FILE}: {section}.{key} must be {'an integer' if integer else 'a number'}; got {value!r}")
    if not math.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise BadJob(f"{JOB_FILE}: {section}.{key} = {value!r} is outside {rng}")


def _vector(section: str, key: str, value: Any, length: int = 3, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (list, tuple)) or len(value) != length:
        raise BadJob(f"{JOB_FILE}: {section}.{key} must be a list of {length} numbers; got {value!r}")
    for i, v in enumerate(value):
        _number(section, f"{key}[{i}]", v)


def _check_simulation(s: dict) -> None:
    sec = "simulation"
    _number(sec, "n_grid", s["n_grid"], 8, 512, integer=True)
    _number(sec, "fps", s["fps"], 1e-3, 1e4)
    _number(sec, "n_frames", s["n_frames"], 1, 100000, integer=True)
    _number(sec, "frame_start", s["frame_start"], integer=True)
    _number(sec, "substep_dt", s["substep_dt"], 1e-9, 1.0, allow_none=True)
    _number(sec, "damping", s["damping"], 0.0, 1e4)
    _vector(sec, "gravity", s["gravity"])
    _vector(sec, "domain_min", s["domain_min"], allow_none=True)
    _vector(sec, "domain_max", s["domain_max"], allow_none=True)
    if (s["domain_min"] is None) != (s["domain_max"] is None):
        raise BadJob(f"{JOB_FILE}: simulation.domain_min and domain_max must be given together")
    if s["domain_min"] is not None and not all(a < b for a, b in zip(s["domain_min"], s["domain_max"])):
        raise BadJob(f"{JOB_FILE}: simulation.domain_min must be below domain_max on every axis")
    if s["material_model"] not in MATERIAL_MODELS:
        raise BadJob(f"{JOB_FILE}: simulation.material_model must be one of {', '.join(MATERIAL_MODELS)}")
    for key in ("walls", "ground"):
        b = s[key]
        if b is None and key == "ground":
            continue
        if not isinstance(b, dict) or b.get("kind", "slip") not in BOUNDARY_KINDS:
            raise BadJob(f"{JOB_FILE}: simulation.{key}.kind must be one of {', '.join(BOUNDARY_KINDS)}")
        _number(sec, f"{key}.friction", b.get("friction", 0.0), 0.0, 10.0)
    for i, p in enumerate(s["pokes"]):
        where = f"pokes[{i}]"
        _vector(sec, f"{where}.center", p.get("center"))
        _vector(sec, f"{where}.direction", p.get("direction"))
        _number(sec, f"{where}.radius", p.get("radius"), 1e-6)
        _number(sec, f"{where}.strength", p.get("strength"), 0.0)
        _window(sec, where, p)
    for i, w in enumerate(s["winds"]):
        where = f"winds[{i}]"
        _vector(sec, f"{where}.direction", w.get("direction"))
        _number(sec, f"{where}.strength", w.get("strength"), 0.0)
        _number(sec, f"{where}.gust_frequency", w.get("gust_frequency", 0.0), 0.0)
        _number(sec, f"{where}.gust_amplitude", w.get("gust_amplitude", 0.0), 0.0, 1.0)
        _window(sec, where, w)
    for i, c in enumerate(s["colliders"]):
        where = f"colliders[{i}]"
        times, centers = c.get("times"), c.get("centers")
        if not isinstance(times, list) or not isinstance(centers, list) or len(times) != len(centers) or not times:
            raise BadJob(f"{JOB_FILE}: simulation.{where} needs 'times' and 'centers' lists of equal, non-zero length")
        for j, ctr in enumerate(centers):
            _vector(sec, f"{where}.centers[{j}]", ctr)
        _vector(sec, f"{where}.half_extents", c.get("half_extents"))
        if c.get("kind", "sticky") not in BOUNDARY_KINDS:
            raise BadJob(f"{JOB_FILE}: simulation.{where}.kind must be one of {', '.join(BOUNDARY_KINDS)}")
    fill = s["fill"]
    if not isinstance(fill, dict):
        raise BadJob(f"{JOB_FILE}: simulation.fill must be an object")
    _number(sec, "fill.max_particles", fill.get("max_particles", 0), 0, 1e8, integer=True)


def _window(sec: str, where: str, d: dict) -> None:
    _number(sec, f"{where}.start", d.get("start", 0.0), 0.0)
    _number(sec, f"{where}.end", d.get("end"), 0.0, allow_none=True)
    if d.get("end") is not None and d["end"] < d.get("start", 0.0):
        raise BadJob(f"{JOB_FILE}: simulation.{where}.end must not be before its start")


def _check_estimate(e: dict, folder: Path) -> None:
    sec = "estimate"
    if e["prior"] not in PRIORS:
        raise BadJob(f"{JOB_FILE}: estimate.prior must be one of {', '.join(PRIORS)}; got {e['prior']!r}")
    if e["field"] not in FIELDS:
        raise BadJob(f"{JOB_FILE}: estimate.field must be one of {', '.join(FIELDS)}; got {e['field']!r}")
    if e["loss"] not in LOSSES:
        raise BadJob(f"{JOB_FILE}: estimate.loss must be one of {', '.join(LOSSES)}; got {e['loss']!r}")
    if e["prior"] == "modelscope" and not str(e["prompt"]).strip():
        raise BadJob(f"{JOB_FILE}: the text-to-video prior needs a prompt describing the motion")
    if e["prior"] in ("svd", "modelscope") and not str(e["model"]).strip():
        raise BadJob(f"{JOB_FILE}: estimate.model must name a hub id or a local model folder")
    if e["prior"] in ("reference", "analytic"):
        ref = str(e["reference_video"])
        if not ref:
            raise BadJob(f"{JOB_FILE}: the {e['prior']} prior needs estimate.reference_video")
        path = Path(ref) if Path(ref).is_absolute() else folder / ref
        if not path.exists():
            raise BadJob(f"reference video not found: {path}")
    _number(sec, "iterations", e["iterations"], 1, 100000, integer=True)
    _number(sec, "tolerance_decades", e["tolerance_decades"], 1e-6, 10)
    if e["stop_rule"] not in STOP_RULES:
        raise BadJob(f"{JOB_FILE}: estimate.stop_rule must be one of {', '.join(STOP_RULES)}; got {e['stop_rule']!r}")
    _number(sec, "stop_window", e["stop_window"], 3, 1000, integer=True)
    _number(sec, "stop_tolerance", e["stop_tolerance"], 1e-6, 1)
    _number(sec, "min_iterations", e["min_iterations"], 0, 100000, integer=True)
    _number(sec, "ladder_rungs", e["ladder_rungs"], 0, 100, integer=True, allow_none=True)
    if e["ladder_rungs"] == 1:
        raise BadJob(f"{JOB_FILE}: estimate.ladder_rungs must be 0 (off) or at least 2")
    _number(sec, "ladder_regions", e["ladder_regions"], 1, 16, integer=True)
    for key in ("learn_nu", "estimate_density"):
        if not isinstance(e[key], bool):
            raise BadJob(f"{JOB_FILE}: estimate.{key} must be true or false; got {e[key]!r}")
    _number(sec, "learning_rate", e["learning_rate"], 1e-8, 10, allow_none=True)
    _number(sec, "frames_per_group", e["frames_per_group"], 1, 1000, integer=True)
    _number(sec, "boost_groups", e["boost_groups"], 1, 100, integer=True)
    _number(sec, "cfg_scale", e["cfg_scale"], 0.0, 1000)
    _number(sec, "bptt_substeps", e["bptt_substeps"], 1, 1e6, integer=True, allow_none=True)
    _vector(sec, "t_range", e["t_range"], 2)
    if not 0.0 <= e["t_range"][0] < e["t_range"][1] <= 1.0:
        raise BadJob(f"{JOB_FILE}: estimate.t_range must satisfy 0 <= lo < hi <= 1")
    _vector(sec, "E_range", e["E_range"], 2)
    if not 0 < e["E_range"][0] < e["E_range"][1]:
        raise BadJob(f"{JOB_FILE}: estimate.E_range must satisfy 0 < lo < hi (Pa)")
    _vector(sec, "nu_range", e["nu_range"], 2)
    if not -1 < e["nu_range"][0] < e["nu_range"][1] < 0.5:
        raise BadJob(f"{JOB_FILE}: estimate.nu_range must satisfy -1 < lo < hi < 0.5")
    _number(sec, "max_particles", e["max_particles"], 0, 1e9, integer=True)


def _check_camera(e: dict) -> None:
    sec = "estimate"
    cam = e["camera"]
    if cam is None:
        raise BadJob(f"{JOB_FILE}: estimate.camera is needed (the view the video is rendered from)")
    if not isinstance(cam, dict) or any(k not in cam for k in CAMERA_KEYS):
        raise BadJob(f"{JOB_FILE}: estimate.camera needs {', '.join(CAMERA_KEYS)}")
    try:
        shapes = np.asarray(cam["viewmat"], dtype=float).shape, np.asarray(cam["K"], dtype=float).shape
    except (TypeError, ValueError):
        shapes = None
    if shapes != ((4, 4), (3, 3)):
        raise BadJob(f"{JOB_FILE}: estimate.camera.viewmat must be 4x4 and K 3x3 numbers")
    _number(sec, "camera.width", cam["width"], 8, 8192, integer=True)
    _number(sec, "camera.height", cam["height"], 8, 8192, integer=True)
    _number(sec, "frames_per_group", e["frames_per_group"], 1, 1000, integer=True)
    _number(sec, "boost_groups", e["boost_groups"], 1, 100, integer=True)


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
    """np.savez to a temp file then rename; the target keeps its exact name (no '.npz' appended)."""
    return _atomic(path, lambda f: np.savez(f, **arrays), "wb")


def remove_temp_files(folder: str | os.PathLike) -> int:
    """Delete leftovers of atomic writes interrupted by a kill. Returns how many were removed."""
    count = 0
    for p in Path(folder).rglob(f".*{TEMP_MARKER}*"):
        try:
            p.unlink()
            count += 1
        except OSError:
            pass
    return count


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


def iter_frame_files(out_dir: str | os.PathLike) -> Iterable[Path]:
    """The finished frame files of a simulation, in frame order."""
    d = Path(out_dir) / FRAMES_DIR
    return sorted(d.glob("frame_*.npz")) if d.is_dir() else []
