"""Simulation settings for the MPM solver.

Units everywhere: metres, seconds, Pa, kg/m^3, m/s^2. Times are simulation time in seconds
from the start of the simulation (t = 0 at the initial state).

The job's settings are validated once, by the job schema in ``backend.protocol``; the classes here
take them as they are. Their defaults and enumerations come from that schema too, and ``validate()``
only normalises types and asserts what the solver's code relies on (a programming error, not user input).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..protocol import BOUNDARY_KINDS, CFL, GRID_PADDING, MATERIAL_MODELS, SIMULATION

_DEFAULTS = SIMULATION.defaults()
_WALLS, _PLASTIC = _DEFAULTS["walls"], _DEFAULTS["plasticity"]
_GROUND = SIMULATION.fields["ground"].defaults()
_COLLIDER = SIMULATION.fields["colliders"].item.fields


class _MaterialModelBase(enum.IntEnum):
    """Constitutive model per particle (the integer is the particle's material id)."""

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


# One member per protocol.MATERIAL_MODELS name, upper-cased, in its order (scene.npz's material_id counts in it).
MaterialModel = _MaterialModelBase("MaterialModel", [(m.upper(), i) for i, m in enumerate(MATERIAL_MODELS)])


def _vec3(v: Any) -> tuple[float, float, float]:
    out = tuple(float(x) for x in v)
    assert len(out) == 3, f"expected 3 numbers, got {v!r}"
    return out  # type: ignore[return-value]


def _end(end: Any) -> float | None:
    return None if end is None else float(end)


@dataclass
class Boundary:
    """Response of the domain walls. kind: "sticky" (velocity zeroed), "slip" (inward normal
    velocity removed, tangential kept) or "frictional" (Coulomb, coefficient `friction`)."""

    kind: str = _WALLS["kind"]
    friction: float = _WALLS["friction"]

    def validate(self) -> "Boundary":
        assert self.kind in BOUNDARY_KINDS, self.kind
        self.friction = float(self.friction)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "Boundary":
        return cls(**d).validate()


@dataclass
class Ground:
    """Horizontal ground plane at world height z = `height` (metres), normal +Z."""

    height: float = _GROUND["height"]
    kind: str = _GROUND["kind"]
    friction: float = _GROUND["friction"]

    def validate(self) -> "Ground":
        assert self.kind in BOUNDARY_KINDS, self.kind
        self.height, self.friction = float(self.height), float(self.friction)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "Ground":
        return cls(**d).validate()


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

    def validate(self) -> "Poke":
        self.center, self.direction = _vec3(self.center), _vec3(self.direction)
        self.radius, self.strength, self.start, self.end = (float(self.radius), float(self.strength),
                                                            float(self.start), _end(self.end))
        assert self.radius > 0 and any(self.direction), "a poke needs a radius and a direction"
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "Poke":
        return cls(**d).validate()


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

    def validate(self) -> "Wind":
        self.direction = _vec3(self.direction)
        assert any(self.direction), "a wind needs a direction"
        self.strength, self.gust_frequency, self.gust_amplitude = (float(self.strength), float(self.gust_frequency),
                                                                   float(self.gust_amplitude))
        self.start, self.end = float(self.start), _end(self.end)
        return self

    def acceleration(self, t: float) -> np.ndarray:
        """World acceleration (3,) at time t (seconds)."""
        if t < self.start or (self.end is not None and t >= self.end):
            return np.zeros(3)
        d = np.asarray(self.direction, dtype=np.float64)
        gust = 1.0 + self.gust_amplitude * math.sin(2.0 * math.pi * self.gust_frequency * (t - self.start))
        return d / np.linalg.norm(d) * self.strength * gust

    @classmethod
    def from_dict(cls, d: dict) -> "Wind":
        return cls(**d).validate()


@dataclass
class BoxCollider:
    """Kinematic axis-aligned box. Its centre follows keyframes (times (K,) seconds, increasing;
    centers (K,3) metres), linearly interpolated and held before the first / after the last key.
    kind: sticky (material moves with the box), slip or frictional (relative to the box)."""

    times: Any = (0.0,)
    centers: Any = ((0.0, 0.0, 0.0),)
    half_extents: tuple = (0.1, 0.1, 0.1)
    kind: str = _COLLIDER["kind"].default
    friction: float = _COLLIDER["friction"].default

    def validate(self) -> "BoxCollider":
        self.times = tuple(float(t) for t in np.asarray(self.times, dtype=np.float64).reshape(-1))
        self.centers = tuple(_vec3(c) for c in self.centers)
        self.half_extents = _vec3(self.half_extents)
        assert len(self.centers) == len(self.times) >= 1 and min(self.half_extents) > 0
        assert self.kind in BOUNDARY_KINDS, self.kind
        self.friction = float(self.friction)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "BoxCollider":
        return cls(**d).validate()


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

    yield_stress: float = _PLASTIC["yield_stress"]
    hardening: float = _PLASTIC["hardening"]
    softening: float = _PLASTIC["softening"]
    viscosity: float = _PLASTIC["viscosity"]
    friction_angle_deg: float = _PLASTIC["friction_angle_deg"]
    cohesion: float = _PLASTIC["cohesion"]
    snow_theta_c: float = _PLASTIC["snow_theta_c"]
    snow_theta_s: float = _PLASTIC["snow_theta_s"]
    snow_hardening: float = _PLASTIC["snow_hardening"]

    def validate(self) -> "Plasticity":
        for f in dataclasses.fields(self):
            setattr(self, f.name, float(getattr(self, f.name)))
        assert 0.0 <= self.friction_angle_deg < 90.0
        return self

    @property
    def dp_alpha(self) -> float:
        """Drucker-Prager cone coefficient sqrt(2/3) * 2 sin(phi) / (3 - sin(phi))."""
        s = math.sin(math.radians(self.friction_angle_deg))
        return math.sqrt(2.0 / 3.0) * 2.0 * s / (3.0 - s)

    @classmethod
    def from_dict(cls, d: dict) -> "Plasticity":
        return cls(**d).validate()


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
    threads: CPU threads of the substeps (None = the usable cores, capped at what helps;
        1 = the single-thread path). The differentiable path's taped substeps always use one.
    """

    n_grid: int = _DEFAULTS["n_grid"]
    domain_min: tuple | None = None
    domain_max: tuple | None = None
    padding: int = GRID_PADDING
    fps: float = _DEFAULTS["fps"]
    substep_dt: float | None = None
    cfl: float = CFL
    max_substeps_per_frame: int = 10000
    gravity: tuple = tuple(_DEFAULTS["gravity"])
    walls: Boundary = field(default_factory=Boundary)
    ground: Ground | None = None
    pokes: list = field(default_factory=list)
    winds: list = field(default_factory=list)
    colliders: list = field(default_factory=list)
    plasticity: Plasticity = field(default_factory=Plasticity)
    damping: float = _DEFAULTS["damping"]
    threads: int | None = _DEFAULTS["threads"]

    def __post_init__(self) -> None:
        self.validate()

    @property
    def frame_dt(self) -> float:
        return 1.0 / self.fps

    def validate(self) -> "SimConfig":
        """Normalise types; the values were validated by the job schema (or by the code that built this)."""
        self.n_grid, self.padding = int(self.n_grid), int(self.padding)
        assert 8 <= self.n_grid and 2 <= self.padding <= self.n_grid // 4, (self.n_grid, self.padding)
        assert (self.domain_min is None) == (self.domain_max is None), "give both domain corners or neither"
        if self.domain_min is not None:
            self.domain_min, self.domain_max = _vec3(self.domain_min), _vec3(self.domain_max)
            assert all(a < b for a, b in zip(self.domain_min, self.domain_max)), "empty domain"
        self.fps, self.cfl = float(self.fps), float(self.cfl)
        assert self.fps > 0 and 0 < self.cfl <= 1
        if self.substep_dt is not None:
            self.substep_dt = float(self.substep_dt)
            assert 0 < self.substep_dt <= self.frame_dt * (1 + 1e-9), "substep_dt must fit in a frame"
        self.max_substeps_per_frame = int(self.max_substeps_per_frame)
        self.gravity, self.damping = _vec3(self.gravity), float(self.damping)
        if self.threads is not None:
            self.threads = int(self.threads)
            assert self.threads >= 1, "threads must be None or >= 1"
        self.walls.validate()
        if self.ground is not None:
            self.ground.validate()
        for name in ("pokes", "winds", "colliders"):
            setattr(self, name, [item.validate() for item in getattr(self, name)])
        self.plasticity.validate()
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "SimConfig":
        """Build from a JSON-style dict (nested dicts for walls, ground, pokes, winds, colliders,
        plasticity), such as a job's validated simulation section."""
        d = dict(d)
        if "walls" in d:
            d["walls"] = Boundary.from_dict(d["walls"])
        if d.get("ground") is not None:
            d["ground"] = Ground.from_dict(d["ground"])
        if "plasticity" in d:
            d["plasticity"] = Plasticity.from_dict(d["plasticity"])
        for name, sub in (("pokes", Poke), ("winds", Wind), ("colliders", BoxCollider)):
            if name in d:
                d[name] = [sub.from_dict(x) for x in d[name]]
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
