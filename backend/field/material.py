"""Material fields: learnable, bounded, per-particle Young's modulus, Poisson ratio (and density).

A field stores the particles' rest positions (normalised to [-1,1]^3 per axis over `bounds`) and
its `forward()` returns the material of every stored particle:

    {"log_E": (N,), "E": (N,) Pa, "nu": (N,), "rho": (N,) kg/m^3}

E is always log-space: E = exp(log Emin + (log Emax - log Emin) * sigmoid(raw)); nu and rho are
sigmoid-bounded. Density is fixed unless `rho_range` is given, because E and rho only enter the
motion through their ratio. Locked particles return the given values exactly.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..protocol import DEFAULT_NU, DEFAULT_RHO, FIELDS
from .bounds import FieldConfigError, SigmoidRange
from .kan import KANLayer
from .triplane import Triplane


def _as_tensor(value, n: int, name: str) -> torch.Tensor:
    """A scalar or an (N,) array -> float32 (N,) tensor; clear error on a wrong shape or a NaN."""
    t = torch.as_tensor(np.asarray(value.detach().cpu() if torch.is_tensor(value) else value,
                                   dtype=np.float64))
    if t.ndim == 0:
        t = t.expand(n)
    if t.shape != (n,):
        raise FieldConfigError(f"init {name} must be a scalar or have one value per particle ({n}), "
                               f"got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise FieldConfigError(f"init {name} contains NaN or infinite values")
    return t.to(torch.float32).contiguous()


def unit_positions(positions: torch.Tensor, bounds=None) -> torch.Tensor:
    """World positions -> [-1,1]^3, per axis over `bounds` (default: the particles' bounding box).

    Per-axis scaling spends the whole plane resolution on the object whatever its aspect ratio.
    """
    p = positions.detach().to(torch.float32)
    if bounds is None:
        lo, hi = p.min(0).values, p.max(0).values
    else:
        lo = torch.as_tensor(bounds[0], dtype=torch.float32, device=p.device).expand(3)
        hi = torch.as_tensor(bounds[1], dtype=torch.float32, device=p.device).expand(3)
        if not bool((hi > lo).all()):
            raise FieldConfigError(f"bounds must have max > min on every axis, got {bounds}")
    extent = hi - lo
    # A flat object (zero extent on an axis) maps to the plane centre instead of dividing by zero.
    floor = max(float(extent.max()) * 1e-6, 1e-12)
    extent = extent.clamp_min(floor)
    return (2.0 * (p - lo) / extent - 1.0).clamp(-1.0, 1.0)


class MaterialField(nn.Module):
    """Base class: owns the bounds, the fixed values, the lock mask and the raw -> physical map.

    Subclasses implement `raw()` -> (N, n_out) unconstrained values, columns in `self.outputs`
    order ("E", then "nu" if learned, then "rho" if learned).
    """

    kind = "base"

    def __init__(self, positions, bounds=None, E_range=(1e3, 1e8), nu_range=(0.05, 0.45),
                 rho_range=None, init=None, lock=None, learn_nu=True):
        super().__init__()
        positions = torch.as_tensor(positions)
        if positions.ndim != 2 or positions.shape[1] != 3 or positions.shape[0] < 1:
            raise FieldConfigError(f"positions must be (N,3) with N >= 1, got {tuple(positions.shape)}")
        if not torch.isfinite(positions).all():
            raise FieldConfigError("positions contain NaN or infinite values")
        n = positions.shape[0]
        self.n = n
        # The ranges come validated from the job schema (protocol.ESTIMATE: E_range, nu_range).
        self.maps = {"E": SigmoidRange(*E_range, log=True), "nu": SigmoidRange(*nu_range)}
        if rho_range is not None:
            self.maps["rho"] = SigmoidRange(*rho_range)
            if self.maps["rho"].lo <= 0:
                raise FieldConfigError(f"rho_range must be positive, got {rho_range}")
        self.outputs = ["E"] + (["nu"] if learn_nu else []) + (["rho"] if rho_range is not None else [])
        self.register_buffer("unit_pos", unit_positions(positions, bounds), persistent=False)

        init = {k: v for k, v in (init or {}).items() if v is not None}
        unknown = set(init) - {"E", "nu", "rho"}
        if unknown:
            raise FieldConfigError(f"init accepts E, nu, rho; got unexpected {sorted(unknown)}")
        self.init_values = {k: _as_tensor(v, n, k) for k, v in init.items()}
        if "E" in self.init_values and not bool((self.init_values["E"] > 0).all()):
            raise FieldConfigError("init E must be positive (Pa)")
        if "nu" in self.init_values and not bool(((self.init_values["nu"] > -1)
                                                  & (self.init_values["nu"] < 0.5)).all()):
            raise FieldConfigError("init nu must lie in (-1, 0.5)")
        if "rho" in self.init_values and not bool((self.init_values["rho"] > 0).all()):
            raise FieldConfigError("init rho must be positive (kg/m^3)")

        # Values that are not learned come from init or the defaults.
        self.register_buffer("fixed_nu", self.init_values.get("nu", torch.full((n,), DEFAULT_NU)).clone())
        self.register_buffer("fixed_rho", self.init_values.get("rho", torch.full((n,), DEFAULT_RHO)).clone())

        if lock is None:
            lock_t = torch.zeros(n, dtype=torch.bool)
        else:
            lock_t = torch.as_tensor(np.asarray(lock.cpu() if torch.is_tensor(lock) else lock)).to(torch.bool)
            if lock_t.shape != (n,):
                raise FieldConfigError(f"lock must have one flag per particle ({n}), got {tuple(lock_t.shape)}")
            if bool(lock_t.any()) and "E" not in self.init_values:
                raise FieldConfigError("locked particles need their values: pass init=dict(E=..., nu=...)")
        self.register_buffer("lock", lock_t)
        self.register_buffer("locked_E", self.init_values.get("E", torch.ones(n)).clone())
        self.register_buffer("locked_nu", self.fixed_nu.clone())
        self.register_buffer("locked_rho", self.fixed_rho.clone())

    # -- subclasses ---------------------------------------------------------------------------
    def raw(self) -> torch.Tensor:
        raise NotImplementedError

    def regularizer(self) -> torch.Tensor:
        return self.unit_pos.new_zeros(())

    # -- physical values ------------------------------------------------------------------------
    def forward(self) -> dict:
        raw = self.raw()
        col = {name: raw[:, i] for i, name in enumerate(self.outputs)}
        log_E = self.maps["E"].inner(col["E"])
        nu = self.maps["nu"].value(col["nu"]) if "nu" in col else self.fixed_nu
        rho = self.maps["rho"].value(col["rho"]) if "rho" in col else self.fixed_rho
        E = torch.exp(log_E)
        if bool(self.lock.any()):
            E = torch.where(self.lock, self.locked_E, E)
            log_E = torch.where(self.lock, torch.log(self.locked_E), log_E)
            nu = torch.where(self.lock, self.locked_nu, nu)
            rho = torch.where(self.lock, self.locked_rho, rho)
        return {"log_E": log_E, "E": E, "nu": nu, "rho": rho}

    def targets_raw(self) -> dict:
        """The init values as raw targets (only for learned outputs that were given)."""
        return {k: self.maps[k].inverse(self.init_values[k].to(torch.float64)).to(torch.float32)
                for k in self.outputs if k in self.init_values}

    @torch.no_grad()
    def materials(self) -> dict:
        """numpy arrays named as the product's point attributes (Pa, -, kg/m^3)."""
        out = self.forward()
        return {"youngs_modulus": out["E"].cpu().numpy().astype(np.float32),
                "poisson_ratio": out["nu"].cpu().numpy().astype(np.float32),
                "density": out["rho"].cpu().numpy().astype(np.float32)}


class PerParticleField(MaterialField):
    """One raw parameter per particle and output; init inverts the bounding map exactly."""

    kind = "per_particle"

    def __init__(self, positions, **common):
        super().__init__(positions, **common)
        raw = torch.zeros(self.n, len(self.outputs))
        for i, (name, target) in enumerate(self._targets().items()):
            raw[:, i] = target
        self.raw_values = nn.Parameter(raw)

    def _targets(self):
        t = self.targets_raw()
        return {k: t.get(k, torch.zeros(self.n)) for k in self.outputs}

    def raw(self):
        return self.raw_values


class GlobalField(MaterialField):
    """A single value per output shared by all particles; init uses the median of the given values."""

    kind = "global"

    def __init__(self, positions, **common):
        super().__init__(positions, **common)
        raw = torch.zeros(len(self.outputs))
        for i, name in enumerate(self.outputs):
            if name in self.init_values:
                med = self.init_values[name].to(torch.float64).median()
                raw[i] = self.maps[name].inverse(med).to(torch.float32)
        self.raw_values = nn.Parameter(raw)

    def raw(self):
        return self.raw_values.expand(self.n, -1)


class _TriplaneField(MaterialField):
    """Shared parts of the triplane fields: planes, an output bias, TV, and init fitting."""

    def __init__(self, positions, channels, resolution, combine, tv_weight, **common):
        super().__init__(positions, **common)
        self.triplane = Triplane(channels, resolution, combine)
        self.tv_weight = float(tv_weight)
        self.bias = nn.Parameter(torch.zeros(len(self.outputs)))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def raw(self, unit_pos=None):
        unit_pos = self.unit_pos if unit_pos is None else unit_pos
        return self.head(self.triplane(unit_pos)) + self.bias

    def regularizer(self):
        return self.tv_weight * self.triplane.tv()

    @torch.no_grad()
    def _set_bias_to_median(self):
        targets = self.targets_raw()
        for i, name in enumerate(self.outputs):
            if name in targets:
                self.bias[i] = targets[name].median()

    def fit_to_init(self, steps: int | None = None, lr: float = 1e-2, batch: int = 2048) -> float | None:
        """Match the init values: bias to the median, then `steps` Adam steps on the field alone.

        The fit loss is the mean squared error in each output's [0,1] range coordinate (log for E),
        so E and nu weigh alike; each step uses a random batch of at most `batch` particles, so the
        cost does not grow with N. steps=None fits only where the given values vary. Returns the
        final fit loss (None when no fit ran).
        """
        targets = self.targets_raw()
        if not targets:
            return None
        self._set_bias_to_median()
        if steps is None:
            varies = any(float(self.init_values[k].max() - self.init_values[k].min()) > 0 for k in targets)
            steps = 200 if varies else 0
        if steps <= 0:
            return None
        device = self.unit_pos.device
        goal = {k: torch.sigmoid(v).to(device) for k, v in targets.items()}
        idx = {name: i for i, name in enumerate(self.outputs)}
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        gen = torch.Generator().manual_seed(0)  # the same init values always give the same field
        loss = None
        for _ in range(steps):
            pick = torch.randint(self.n, (min(batch, self.n),), generator=gen).to(device)
            opt.zero_grad(set_to_none=True)
            raw = self.raw(self.unit_pos[pick])
            loss = sum((torch.sigmoid(raw[:, idx[k]]) - g[pick]).square().mean() for k, g in goal.items())
            loss.backward()
            opt.step()
        return float(loss.detach())


class KANTriplaneField(_TriplaneField):
    """Triplane features -> normalisation -> Kolmogorov-Arnold layers -> raw (log E, nu, rho).

    norm="layernorm": tanh(LayerNorm(features)); norm="tanh": tanh(features). Either way the KAN
    inputs lie inside the spline grid (-1, 1); hidden KAN outputs pass through tanh for the same
    reason. The last layer starts small so the initial field is close to its bias (the median).
    """

    kind = "kan_triplane"

    def __init__(self, positions, channels=16, resolution=16, combine="concat", norm="layernorm",
                 hidden=(16,), grid_size=5, order=3, tv_weight=1e-3, spline_l1_weight=0.0, **common):
        super().__init__(positions, channels, resolution, combine, tv_weight, **common)
        if norm not in ("layernorm", "tanh"):
            raise FieldConfigError(f"norm must be 'layernorm' or 'tanh', got {norm!r}")
        self.norm = nn.LayerNorm(self.triplane.out_features, elementwise_affine=False) if norm == "layernorm" else None
        widths = [self.triplane.out_features, *hidden, len(self.outputs)]
        self.layers = nn.ModuleList(
            KANLayer(a, b, grid_size=grid_size, order=order, init_scale=(0.01 if i == len(widths) - 2 else 1.0))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.spline_l1_weight = float(spline_l1_weight)

    def head(self, features):
        x = torch.tanh(self.norm(features) if self.norm is not None else features)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x

    def spline_l1(self):
        return sum(layer.spline_l1() for layer in self.layers) / len(self.layers)

    def regularizer(self):
        reg = super().regularizer()
        if self.spline_l1_weight:
            reg = reg + self.spline_l1_weight * self.spline_l1()
        return reg


class MLPTriplaneField(_TriplaneField):
    """PhysDreamer's field: triplane (3 x 32 features, resolution 8) -> 2-layer MLP, last layer zero."""

    kind = "mlp_triplane"

    def __init__(self, positions, channels=32, resolution=8, combine="concat", hidden=64,
                 tv_weight=1e-3, **common):
        super().__init__(positions, channels, resolution, combine, tv_weight, **common)
        last = nn.Linear(hidden, len(self.outputs))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.mlp = nn.Sequential(nn.Linear(self.triplane.out_features, hidden), nn.SiLU(), last)

    def head(self, features):
        return self.mlp(features)


FIELD_KINDS = {cls.kind: cls for cls in (KANTriplaneField, MLPTriplaneField, PerParticleField, GlobalField)}
assert set(FIELD_KINDS) == set(FIELDS), "every field the job schema names has a class"


def make_field(kind, positions, bounds=None, E_range=(1e3, 1e8), nu_range=(0.05, 0.45), rho_range=None,
               init=None, lock=None, learn_nu=True, fit_steps=None, fit_lr=1e-2, fit_batch=2048,
               **kind_options) -> MaterialField:
    """Build a material field by name ("kan_triplane", "mlp_triplane", "per_particle", "global").

    positions: (N,3) world rest positions (tensor or array); its device is the field's device.
    init: dict(E=..., nu=..., rho=...) of scalars or (N,) arrays, the user's current values. Triplane
    fields set their output bias to the median and, where the values vary, fit themselves to them
    with `fit_steps` Adam steps on random batches of `fit_batch` particles (default 200; 0 disables).
    Per-particle fields invert the map exactly.
    lock: (N,) bool; locked particles output their init values exactly.
    kind_options: per kind (see the classes), e.g. channels, resolution, combine, hidden, tv_weight.
    """
    if kind not in FIELD_KINDS:
        raise FieldConfigError(f"unknown material field {kind!r}; choose one of {sorted(FIELD_KINDS)}")
    positions = torch.as_tensor(positions)
    try:
        field = FIELD_KINDS[kind](positions.to(torch.float32), bounds=bounds, E_range=E_range, nu_range=nu_range,
                                  rho_range=rho_range, init=init, lock=lock, learn_nu=learn_nu, **kind_options)
    except TypeError as err:  # an option the kind does not take
        raise FieldConfigError(f"bad option for field {kind!r}: {err}") from None
    field = field.to(positions.device)
    if isinstance(field, _TriplaneField):
        field.fit_to_init(steps=fit_steps, lr=fit_lr, batch=fit_batch)
    return field
