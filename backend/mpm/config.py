"""Simulation settings for the MPM solver, with JSON parsing and validation.

Units everywhere: metres, seconds, Pa, kg/m^3, m/s^2. Times are simulation time in seconds
from the start of the simulation (t = 0 at the initial state).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BOUNDARY_KINDS = ("sticky", "slip", "frictional")


class MaterialModel(enum.IntEnum):
    """Constitutive model per particle (the integer is the particle's material id)."""

    FIXED_COROTATED = 0
    NEO_HOOKEAN = 1
    STVK_HENCKY = 2
    VON_MISES = 3
    DRUCKER_PRAGER = 4
    FOAM = 5
    PLASTICINE = 6
    SNOW = 7

    @classmethod
    def parse(cls, value: Any) -> "MaterialModel":
        """Accept a MaterialModel, an int id or a job string name such as "drucker_prager"."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().upper()
            if key in cls.__members__:
                return cls[key]
            if key.isdigit() and int(key) < len(cls):
                return cls(int(key))
            names = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown material model {value!r}; expected one of: {names}")
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            try:
                return cls(int(value))
            except ValueError:
                pass
        raise ValueError(f"unknown material model {value!r}; expected a name or an id 0..{len(cls) - 1}")


def _err(path: str, msg: str) -> ValueError:
    return ValueError(f"{path}: {msg}")


def _float(v: Any, path: str, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise _err(path, f"expected a number, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise _err(path, f"must be finite, got {v!r}")
    if lo is not None and (f < lo or (lo_open and f == lo)):
        raise _err(path, f"must be {'>' if lo_open else '>='} {lo}, got {f}")
    if hi is not None and f > hi:
        raise _err(path, f"must be <= {hi}, got {f}")
    return f


def _int(v: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        else:
            raise _err(path, f"expected an integer, got {v!r}")
    i = int(v)
    if lo is not None and i < lo:
        raise _err(path, f"must be >= {lo}, got {i}")
    if hi is not None and i > hi:
        raise _err(path, f"must be <= {hi}, got {i}")
    return i


def _vec3(v: Any, path: str, nonzero: bool = False) -> tuple[float, float, float]:
    try:
        seq = list(v)
    except TypeError:
        raise _err(path, f"expected 3 numbers, got {v!r}") from None
    if len(seq) != 3:
        raise _err(path, f"expected 3 numbers, got {len(seq)}")
    out = tuple(_float(x, f"{path}[{i}]") for i, x in enumerate(seq))
    if nonzero and all(x == 0.0 for x in out):
        raise _err(path, "must not be the zero vector")
    return out  # type: ignore[return-value]


def _kind(v: Any, path: str) -> str:
    if not isinstance(v, str) or v.lower() not in BOUNDARY_KINDS:
        raise _err(path, f"must be one of {', '.join(BOUNDARY_KINDS)}; got {v!r}")
    return v.lower()


def _window(start: Any, end: Any, path: str) -> tuple[float, float | None]:
    s = _float(start, f"{path}.start")
    if end is None:
        return s, None
    e = _float(end, f"{path}.end")
    if e <= s:
        raise _err(f"{path}.end", f"must be after start ({s}), got {e}")
    return s, e


def _check_keys(d: Any, cls: type, path: str) -> dict:
    if not isinstance(d, dict):
        raise _err(path, f"expected an object, got {type(d).__name__}")
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _err(path, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return d


@dataclass
class Boundary:
    """Response of the domain walls. kind: "sticky" (velocity zeroed), "slip" (inward normal
    velocity removed, tangential kept) or "frictional" (Coulomb, coefficient `friction`)."""

    kind: str = "slip"
    friction: float = 0.3

    def validate(self, path: str = "walls") -> "Boundary":
        self.kind = _kind(self.kind, f"{path}.kind")
        self.friction = _float(self.friction, f"{path}.friction", lo=0.0)
        return self

    @classmethod
    def from_dict(cls, d: dict, path: str = "walls") -> "Boundary":
        return cls(**_check_keys(d, cls, path)).validate(path)


@dataclass
class Ground:
    """Horizontal ground plane at world height z = `height` (metres), normal +Z."""

    height: float = 0.0
    kind: str = "frictional"
    friction: float = 0.5

    def validate(self, path: str = "ground") -> "Ground":
        self.height = _float(self.height, f"{path}.height")
        self.kind = _kind(self.kind, f"{path}.kind")
        self.friction = _float(self.friction, f"{path}.friction", lo=0.0)
        return self

    @classmethod
    def from_dict(cls, d: dict, path: str = "ground") -> "Ground":
        return cls(**_check_keys(d, cls, path)).validate(path)


@dataclass
class Poke:
    """A push on the particles inside a sphere during [start, end) seconds.

    `strength` is an acceleration in m/s^2 applied along `direction` (normalised) to every
    particle whose position is inside the sphere (centre, radius in metres). A short window
    gives an impulse: the velocity change is strength * (end - start). end=None: forever.
    """

    center: tuple = (0.0, 0.0, 0.0)
    radius: float = 0.1
    direction: tuple = (1.0, 0.0, 0.0)
    strength: float = 10.0
    start: float = 0.0
    end: float | None = 0.1

    def validate(self, path: str = "poke") -> "Poke":
        self.center = _vec3(self.center, f"{path}.center")
        self.radius = _float(self.radius, f"{path}.radius", lo=0.0, lo_open=True)
        self.direction = _vec3(self.direction, f"{path}.direction", nonzero=True)
        self.strength = _float(self.strength, f"{path}.strength")
        self.start, self.end = _window(self.start, self.end, path)
        return self

    @classmethod
    def from_dict(cls, d: dict, path: str = "poke") -> "Poke":
        return cls(**_check_keys(d, cls, path)).validate(path)


@dataclass
class Wind:
    """Uniform body acceleration (m/s^2) along `direction`, on all particles, with gusts:
    a(t) = strength * (1 + gust_amplitude * sin(2 pi gust_frequency (t - start))) during [start, end)."""

    direction: tuple = (1.0, 0.0, 0.0)
    strength: float = 1.0
    gust_frequency: float = 0.0
    gust_amplitude: float = 0.0
    start: float = 0.0
    end: float | None = None

    def validate(self, path: str = "wind") -> "Wind":
        self.direction = _vec3(self.direction, f"{path}.direction", nonzero=True)
        self.strength = _float(self.strength, f"{path}.strength")
        self.gust_frequency = _float(self.gust_frequency, f"{path}.gust_frequency", lo=0.0)
        self.gust_amplitude = _float(self.gust_amplitude, f"{path}.gust_amplitude", lo=0.0, hi=1.0)
        self.start, self.end = _window(self.start, self.end, path)
        return self

    def acceleration(self, t: float) -> np.ndarray:
        """World acceleration (3,) at time t (seconds)."""
        if t < self.start or (self.end is not None and t >= self.end):
            return np.zeros(3)
        d = np.asarray(self.direction, dtype=np.float64)
        gust = 1.0 + self.gust_amplitude * math.sin(2.0 * math.pi * self.gust_frequency * (t - self.start))
        return d / np.linalg.norm(d) * self.strength * gust

    @classmethod
    def from_dict(cls, d: dict, path: str = "wind") -> "Wind":
        return cls(**_check_keys(d, cls, path)).validate(path)


@dataclass
class BoxCollider:
    """Kinematic axis-aligned box. Its centre follows keyframes (times (K,) seconds, increasing;
    centers (K,3) metres), linearly interpolated and held before the first / after the last key.
    kind: sticky (material moves with the box), slip or frictional (relative to the box)."""

    times: Any = (0.0,)
    centers: Any = ((0.0, 0.0, 0.0),)
    half_extents: tuple = (0.1, 0.1, 0.1)
    kind: str = "sticky"
    friction: float = 0.3

    def validate(self, path: str = "collider") -> "BoxCollider":
        try:
            times = np.asarray(self.times, dtype=np.float64).reshape(-1)
            centers = np.asarray(self.centers, dtype=np.float64)
        except (TypeError, ValueError):
            raise _err(path, "times must be numbers and centers a (K,3) list of numbers") from None
        if times.size == 0:
            raise _err(f"{path}.times", "needs at least one keyframe")
        if centers.shape != (times.size, 3):
            raise _err(f"{path}.centers", f"expected shape ({times.size}, 3), got {centers.shape}")
        if not (np.isfinite(times).all() and np.isfinite(centers).all()):
            raise _err(path, "times and centers must be finite")
        if times.size > 1 and not np.all(np.diff(times) > 0):
            raise _err(f"{path}.times", "must be strictly increasing")
        self.times = tuple(float(t) for t in times)
        self.centers = tuple(tuple(float(c) for c in row) for row in centers)
        self.half_extents = _vec3(self.half_extents, f"{path}.half_extents")
        if min(self.half_extents) <= 0:
            raise _err(f"{path}.half_extents", "must all be > 0")
        self.kind = _kind(self.kind, f"{path}.kind")
        self.friction = _float(self.friction, f"{path}.friction", lo=0.0)
        return self

    @classmethod
    def from_dict(cls, d: dict, path: str = "collider") -> "BoxCollider":
        return cls(**_check_keys(d, cls, path)).validate(path)


@dataclass
class Plasticity:
    """Parameters of the plastic models (shared by all particles of the model that uses them).

    yield_stress (Pa): von Mises / foam / plasticine yield stress.
    hardening: von Mises linear hardening, yield * (1 + hardening * accumulated plastic strain).
    softening: plasticine softening, yield / (1 + softening * accumulated plastic strain).
    viscosity (Pa s): foam viscoplastic flow, the plastic step is scaled by 1 / (1 + viscosity / (2 mu dt)).
    friction_angle_deg: Drucker-Prager friction angle of sand.
    cohesion: Drucker-Prager cohesion as a log-volumetric strain the sand may expand before failing (>= 0).
    snow_theta_c / snow_theta_s: Stomakhin 2013 critical compression / stretch.
    snow_hardening: xi in mu(Jp) = mu0 exp(xi (1 - Jp)).
    """

    yield_stress: float = 1.0e4
    hardening: float = 0.0
    softening: float = 0.5
    viscosity: float = 10.0
    friction_angle_deg: float = 30.0
    cohesion: float = 0.0
    snow_theta_c: float = 2.5e-2
    snow_theta_s: float = 7.5e-3
    snow_hardening: float = 10.0

    def validate(self, path: str = "plasticity") -> "Plasticity":
        self.yield_stress = _float(self.yield_stress, f"{path}.yield_stress", lo=0.0)
        self.hardening = _float(self.hardening, f"{path}.hardening", lo=0.0)
        self.softening = _float(self.softening, f"{path}.softening", lo=0.0)
        self.viscosity = _float(self.viscosity, f"{path}.viscosity", lo=0.0)
        self.friction_angle_deg = _float(self.friction_angle_deg, f"{path}.friction_angle_deg", lo=0.0, hi=89.0)
        self.cohesion = _float(self.cohesion, f"{path}.cohesion", lo=0.0)
        self.snow_theta_c = _float(self.snow_theta_c, f"{path}.snow_theta_c", lo=0.0, hi=0.99)
        self.snow_theta_s = _float(self.snow_theta_s, f"{path}.snow_theta_s", lo=0.0)
        self.snow_hardening = _float(self.snow_hardening, f"{path}.snow_hardening", lo=0.0)
        return self

    @property
    def dp_alpha(self) -> float:
        """Drucker-Prager cone coefficient sqrt(2/3) * 2 sin(phi) / (3 - sin(phi))."""
        s = math.sin(math.radians(self.friction_angle_deg))
        return math.sqrt(2.0 / 3.0) * 2.0 * s / (3.0 - s)

    @classmethod
    def from_dict(cls, d: dict, path: str = "plasticity") -> "Plasticity":
        return cls(**_check_keys(d, cls, path)).validate(path)


@dataclass
class SimConfig:
    """All settings of one simulation.

    n_grid: grid nodes per axis of the cubic background grid.
    domain_min / domain_max: world AABB (metres) of the simulated region; the walls sit on its
        faces. None: the particles' bounding box enlarged by half its largest extent on each side.
    padding: grid cells kept outside the domain on each side (>= 2) so particles never index
        outside the grid.
    fps: output frames per second; the frame time is 1 / fps.
    substep_dt: substep in seconds, or None for an automatic CFL bound; rounded down so that the
        frame time is an integer number of substeps.
    cfl: CFL number of the automatic bound dt <= cfl * dx / (c_p + v_max) with the P-wave speed
        c_p = sqrt((lambda + 2 mu) / rho).
    max_substeps_per_frame: cap on the substeps per frame (the CFL bound is not met beyond it).
    damping: grid velocity damping rate in 1/s (velocity decays as exp(-damping t)).
    threads: CPU threads of the forward substeps (None = the usable cores, capped at what helps;
        1 = the single-thread path). The differentiable path's taped substeps always use one.
    """

    n_grid: int = 64
    domain_min: tuple | None = None
    domain_max: tuple | None = None
    padding: int = 3
    fps: float = 24.0
    substep_dt: float | None = None
    cfl: float = 0.3
    max_substeps_per_frame: int = 10000
    gravity: tuple = (0.0, 0.0, -9.81)
    walls: Boundary = field(default_factory=Boundary)
    ground: Ground | None = None
    pokes: list = field(default_factory=list)
    winds: list = field(default_factory=list)
    colliders: list = field(default_factory=list)
    plasticity: Plasticity = field(default_factory=Plasticity)
    damping: float = 0.0
    threads: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def frame_dt(self) -> float:
        return 1.0 / self.fps

    def validate(self) -> "SimConfig":
        self.n_grid = _int(self.n_grid, "n_grid", lo=8, hi=1024)
        self.padding = _int(self.padding, "padding", lo=2, hi=self.n_grid // 4)
        if (self.domain_min is None) != (self.domain_max is None):
            raise _err("domain_min/domain_max", "give both or neither")
        if self.domain_min is not None:
            self.domain_min = _vec3(self.domain_min, "domain_min")
            self.domain_max = _vec3(self.domain_max, "domain_max")
            for a in range(3):
                if self.domain_max[a] <= self.domain_min[a]:
                    raise _err("domain_max", f"must exceed domain_min on every axis (axis {a}: "
                                             f"{self.domain_min[a]} .. {self.domain_max[a]})")
        self.fps = _float(self.fps, "fps", lo=0.0, lo_open=True)
        if self.substep_dt is not None:
            self.substep_dt = _float(self.substep_dt, "substep_dt", lo=0.0, lo_open=True)
            if self.substep_dt > self.frame_dt * (1 + 1e-9):
                raise _err("substep_dt", f"must not exceed the frame time 1/fps = {self.frame_dt:g} s")
        self.cfl = _float(self.cfl, "cfl", lo=0.0, hi=1.0, lo_open=True)
        self.max_substeps_per_frame = _int(self.max_substeps_per_frame, "max_substeps_per_frame", lo=1)
        self.gravity = _vec3(self.gravity, "gravity")
        self.damping = _float(self.damping, "damping", lo=0.0)
        if self.threads is not None:
            self.threads = _int(self.threads, "threads", lo=1, hi=256)
        if not isinstance(self.walls, Boundary):
            raise _err("walls", "expected a Boundary")
        self.walls.validate("walls")
        if self.ground is not None:
            if not isinstance(self.ground, Ground):
                raise _err("ground", "expected a Ground or None")
            self.ground.validate("ground")
        for name, cls in (("pokes", Poke), ("winds", Wind), ("colliders", BoxCollider)):
            items = getattr(self, name)
            if not isinstance(items, (list, tuple)):
                raise _err(name, "expected a list")
            for i, item in enumerate(items):
                if not isinstance(item, cls):
                    raise _err(f"{name}[{i}]", f"expected a {cls.__name__}")
                item.validate(f"{name}[{i}]")
            setattr(self, name, list(items))
        if not isinstance(self.plasticity, Plasticity):
            raise _err("plasticity", "expected a Plasticity")
        self.plasticity.validate("plasticity")
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "SimConfig":
        """Build from a JSON-style dict (nested dicts for walls, ground, pokes, winds,
        colliders, plasticity). Raises ValueError naming the bad key."""
        d = dict(_check_keys(d, cls, "config"))
        if "walls" in d:
            d["walls"] = Boundary.from_dict(d["walls"], "walls")
        if d.get("ground") is not None:
            d["ground"] = Ground.from_dict(d["ground"], "ground")
        if "plasticity" in d:
            d["plasticity"] = Plasticity.from_dict(d["plasticity"], "plasticity")
        for name, sub in (("pokes", Poke), ("winds", Wind), ("colliders", BoxCollider)):
            if name in d:
                if not isinstance(d[name], (list, tuple)):
                    raise _err(name, "expected a list")
                d[name] = [sub.from_dict(x, f"{name}[{i}]") for i, x in enumerate(d[name])]
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-serialisable dict that from_dict reads back."""
        out = dataclasses.asdict(self)

        def clean(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [clean(x) for x in v]
            return v

        return clean(out)
