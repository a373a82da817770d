"""Per-point materials on a Blender object: reading, validated all-or-nothing writing, locks, heat map.

Materials are POINT float attributes named as in the contract: ``youngs_modulus`` (Pa),
``poisson_ratio``, ``density`` (kg/m^3). A result is checked completely before the mesh is touched,
and the previous values are put back if writing fails part way, so the scene is never left with
half a result.

Artist overrides: points in the vertex group ``splat_lock`` (weight >= 0.5) or with the bool
attribute ``material_lock`` keep their values through the next estimation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..backend import protocol
from . import look

MATERIAL_ATTRS = ("youngs_modulus", "poisson_ratio", "density")
HEAT_ATTR = "heat_color"
LOCK_GROUP = "splat_lock"
LOCK_ATTR = "material_lock"

# Fixed soft -> stiff ramp (viridis stops, sRGB). Its luminance rises monotonically, so the map also reads in grey.
_RAMP_SRGB = np.array([
    (68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37),
], dtype=np.float64) / 255.0


class MaterialsError(ValueError):
    """A materials array that must not reach the scene; the message says what is wrong."""


# ---------------------------------------------------------------------------- attributes
def point_count(obj) -> int:
    if obj is None or obj.data is None:
        return 0
    if obj.type == "MESH":
        return len(obj.data.vertices)
    if obj.type == "POINTCLOUD":
        return len(obj.data.points)
    return 0


_KEY = {"FLOAT": "value", "INT": "value", "BOOLEAN": "value", "FLOAT_VECTOR": "vector", "FLOAT_COLOR": "color",
        "QUATERNION": "value"}
_WIDTH = {"FLOAT": 1, "INT": 1, "BOOLEAN": 1, "FLOAT_VECTOR": 3, "FLOAT_COLOR": 4, "QUATERNION": 4}
_DTYPE = {"FLOAT": np.float32, "INT": np.int32, "BOOLEAN": bool, "FLOAT_VECTOR": np.float32,
          "FLOAT_COLOR": np.float32, "QUATERNION": np.float32}


def read_attr(obj, name: str) -> np.ndarray | None:
    """A POINT attribute as numpy ((N,) or (N,k)); None if absent or on another domain."""
    attr = obj.data.attributes.get(name)
    if attr is None or attr.domain != "POINT" or attr.data_type not in _KEY:
        return None
    n = point_count(obj)
    width = _WIDTH[attr.data_type]
    out = np.empty(n * width, dtype=_DTYPE[attr.data_type])
    attr.data.foreach_get(_KEY[attr.data_type], out)
    return out.reshape(n, width) if width > 1 else out


def write_attr(obj, name: str, values: np.ndarray, data_type: str = "FLOAT") -> None:
    """Create or replace a POINT attribute of ``data_type`` with ``values`` (length = point count)."""
    attrs = obj.data.attributes
    attr = attrs.get(name)
    if attr is not None and (attr.domain != "POINT" or attr.data_type != data_type):
        attrs.remove(attr)
        attr = None
    if attr is None:
        attr = attrs.new(name, data_type, "POINT")
    flat = np.ascontiguousarray(values, dtype=_DTYPE[data_type]).reshape(-1)
    attr.data.foreach_set(_KEY[data_type], flat)
    obj.data.update()


def remove_attr(obj, name: str) -> None:
    attr = obj.data.attributes.get(name)
    if attr is not None:
        obj.data.attributes.remove(attr)


def read_materials(obj) -> dict[str, np.ndarray]:
    """The material attributes the object has (any subset of MATERIAL_ATTRS)."""
    out = {}
    for name in MATERIAL_ATTRS:
        a = read_attr(obj, name)
        if a is not None and a.ndim == 1:
            out[name] = a
    return out


# ---------------------------------------------------------------------------- validation + apply
def validate_materials(arrays, n: int) -> dict[str, np.ndarray]:
    """Check a full materials set for ``n`` points: all present, right length, finite, physical."""
    out = {}
    for name in MATERIAL_ATTRS:
        if name not in arrays:
            raise MaterialsError(f"the result has no '{name}'")
        a = np.asarray(arrays[name])
        if a.dtype.kind not in "fiu":
            raise MaterialsError(f"'{name}' is not numeric ({a.dtype})")
        if a.shape != (n,):
            raise MaterialsError(f"'{name}' has shape {a.shape} but the object has {n} points; "
                                 "the object changed since the job was written")
        if not np.all(np.isfinite(a)):
            raise MaterialsError(f"'{name}' has {int(np.count_nonzero(~np.isfinite(a)))} NaN or infinite values")
        out[name] = a.astype(np.float32)
    if np.any(out["youngs_modulus"] <= 0) or np.any(out["density"] <= 0):
        raise MaterialsError("stiffness and density must be positive")
    nu = out["poisson_ratio"]
    if np.any(nu <= -1.0) or np.any(nu >= 0.5):
        raise MaterialsError(f"Poisson ratio must lie in (-1, 0.5); got [{nu.min():g}, {nu.max():g}]")
    return out


def load_materials_file(path, n: int) -> dict[str, np.ndarray]:
    """Read and validate ``out/materials.npz`` for an object of ``n`` points."""
    try:
        arrays = protocol.load_npz(path)
    except protocol.JobError as exc:
        raise MaterialsError(exc.message) from None
    return validate_materials(arrays, n)


def apply_materials(obj, arrays) -> dict[str, np.ndarray]:
    """Write a validated materials set as POINT attributes, all or nothing; refresh the heat map."""
    clean = validate_materials(arrays, point_count(obj))
    before = read_materials(obj)
    try:
        for name in MATERIAL_ATTRS:
            write_attr(obj, name, clean[name])
    except BaseException:
        _restore(obj, before)
        raise
    if obj.splat_physics.show_heatmap:
        update_heatmap(obj)
    else:
        _update_percentiles(obj, clean["youngs_modulus"])  # the panel's per-point summary
    return clean


def _update_percentiles(obj, E: np.ndarray) -> tuple[float, float, float]:
    p5, p50, p95 = (float(v) for v in np.percentile(E, [5, 50, 95]))
    s = obj.splat_physics
    s.heat_p5, s.heat_p50, s.heat_p95 = p5, p50, p95
    return p5, p50, p95


def _restore(obj, before: dict) -> None:
    for name in MATERIAL_ATTRS:
        if name in before:
            write_attr(obj, name, before[name])
        else:
            remove_attr(obj, name)


def material_arrays(obj, defaults: dict[str, float]) -> dict[str, np.ndarray]:
    """E, nu, rho per point: the attributes where present (painted or estimated), else the defaults."""
    n = point_count(obj)
    have = read_materials(obj)
    return {name: have.get(name, np.full(n, defaults[name], dtype=np.float32)).astype(np.float32)
            for name in MATERIAL_ATTRS}


# ---------------------------------------------------------------------------- locks and overrides
def lock_mask(obj) -> np.ndarray | None:
    """Points whose materials the estimator must keep; None when the object has no lock at all."""
    mask = None
    attr = read_attr(obj, LOCK_ATTR)
    if attr is not None:
        mask = attr.reshape(-1).astype(bool)
    group = obj.vertex_groups.get(LOCK_GROUP) if obj.type == "MESH" else None
    if group is not None:
        # Vertex groups have no bulk accessor; this walks the vertices once.
        gi = group.index
        locked = np.fromiter(
            (any(g.group == gi and g.weight >= 0.5 for g in v.groups) for v in obj.data.vertices),
            dtype=bool, count=len(obj.data.vertices))
        mask = locked if mask is None else (mask | locked)
    return mask


def selected_points(obj) -> np.ndarray:
    """Mask of the points selected in edit mode (all False if none are)."""
    sel = obj.data.attributes.get(".select_vert")
    n = point_count(obj)
    if sel is None:
        return np.zeros(n, dtype=bool)
    out = np.zeros(n, dtype=bool)
    sel.data.foreach_get("value", out)
    return out


def override_materials(obj, mask: np.ndarray, defaults: dict[str, float], youngs_modulus=None,
                       poisson_ratio=None, density=None, lock: bool = True) -> int:
    """Set E/nu/rho on the masked points (others keep theirs) and lock them for the next estimation."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0
    arrays = material_arrays(obj, defaults)
    for name, value in (("youngs_modulus", youngs_modulus), ("poisson_ratio", poisson_ratio), ("density", density)):
        if value is not None:
            arrays[name][mask] = value
    apply_materials(obj, arrays)
    if lock:
        current = read_attr(obj, LOCK_ATTR)
        locked = mask if current is None else (current.astype(bool) | mask)
        write_attr(obj, LOCK_ATTR, locked, "BOOLEAN")
    return int(mask.sum())


# ---------------------------------------------------------------------------- heat map
def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def ramp(t) -> np.ndarray:
    """Colours (linear RGB, (M,3)) of the fixed ramp at parameters t in [0, 1]."""
    t = np.clip(np.asarray(t, dtype=np.float64).reshape(-1), 0.0, 1.0)
    x = t * (len(_RAMP_SRGB) - 1)
    i = np.minimum(x.astype(int), len(_RAMP_SRGB) - 2)
    f = (x - i)[:, None]
    srgb = _RAMP_SRGB[i] * (1.0 - f) + _RAMP_SRGB[i + 1] * f
    return _srgb_to_linear(srgb)


def heat_parameter(youngs_modulus: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ramp parameter per point from log10 E, stretched over the object's own range; and that range."""
    logE = np.log10(np.maximum(np.asarray(youngs_modulus, dtype=np.float64), 1e-30))
    lo, hi = float(logE.min()), float(logE.max())
    if hi - lo < 1e-6:
        return np.full(len(logE), 0.5), lo, hi
    return (logE - lo) / (hi - lo), lo, hi


def update_heatmap(obj) -> dict | None:
    """Write ``heat_color`` from log10 E and fill the legend and percentile readouts. None without E."""
    E = read_attr(obj, "youngs_modulus")
    if E is None or E.ndim != 1 or len(E) == 0:
        return None
    t, lo, hi = heat_parameter(E)
    rgb = ramp(t)
    write_attr(obj, HEAT_ATTR, np.concatenate([rgb, np.ones((len(rgb), 1))], axis=1), "FLOAT_COLOR")
    p5, p50, p95 = _update_percentiles(obj, E)
    s = obj.splat_physics
    s.heat_min_E, s.heat_max_E = 10.0 ** lo, 10.0 ** hi
    s.heat_min_color = tuple(ramp(0.0 if hi > lo else 0.5)[0])
    s.heat_max_color = tuple(ramp(1.0 if hi > lo else 0.5)[0])
    return {"min": 10.0 ** lo, "max": 10.0 ** hi, "p5": float(p5), "p50": float(p50), "p95": float(p95)}


def show_heatmap(obj, visible: bool) -> None:
    """Compute the heat map (when showing) and switch the splat look to it, if the look is set up."""
    if visible and update_heatmap(obj) is None:
        return
    look.set_heatmap_visible(obj, visible)


# Blender has no pressure unit: stiffness is typed as a value and one of these units.
PRESSURE_UNITS = {"Pa": 1.0, "kPa": 1e3, "MPa": 1e6, "GPa": 1e9}
# What the artist may type: stiffness in Pa, Poisson ratio (inside protocol.NU_LIMITS), density in kg/m^3.
E_RANGE = (1.0, 1.0e12)
NU_RANGE = (-0.99, 0.49)
RHO_RANGE = (1e-3, 1e5)


def pa_from(value: float, unit: str) -> float:
    """A stiffness typed in ``unit``, in Pa, kept inside E_RANGE."""
    return min(max(value * PRESSURE_UNITS[unit], E_RANGE[0]), E_RANGE[1])


def pressure_unit(value: float) -> str:
    """The unit that shows ``value`` (Pa) with 1 to 3 digits before the point."""
    return next((u for u, k in reversed(PRESSURE_UNITS.items()) if value >= k), "Pa")


def format_pa(value: float) -> str:
    """A stiffness for people: 12.3 kPa, 4.5 MPa."""
    if not math.isfinite(value) or value <= 0:
        return "–"
    unit = pressure_unit(value)
    return f"{value / PRESSURE_UNITS[unit]:.3g} {unit}"


# Typical real values: (label, constitutive model, E in Pa, Poisson ratio, density in kg/m^3, description).
# Poisson ratios of nearly incompressible materials (rubber, jelly: ~0.5) are capped at 0.45, where an
# explicit MPM solver stays stable at a usable time step.
MATERIAL_PRESETS = {
    "jelly": ("Jelly", "neo_hookean", 5.0e3, 0.45, 1050.0, "Gelatin dessert: very soft, wobbles"),
    "rubber": ("Rubber", "neo_hookean", 2.0e6, 0.45, 1100.0, "Soft rubber: springs back from large deformations"),
    "foam": ("Foam", "foam", 1.0e5, 0.2, 50.0, "Polyurethane foam: light, stays dented"),
    "plant_stem": ("Plant stem", "fixed_corotated", 1.0e7, 0.3, 800.0, "Green herbaceous stem"),
    "wood": ("Wood", "fixed_corotated", 1.0e10, 0.3, 600.0, "Wood along the grain: hardly bends"),
    "clay": ("Clay", "plasticine", 1.0e6, 0.4, 1800.0, "Modelling clay: keeps the shape it is pushed into"),
    "sand": ("Sand", "drucker_prager", 3.0e7, 0.3, 1600.0, "Dry sand: piles and flows"),
    "snow": ("Snow", "snow", 1.4e5, 0.2, 400.0, "Packed snow: hardens when pressed, breaks when pulled"),
    "metal": ("Metal", "von_mises", 2.0e11, 0.3, 7850.0, "Steel: stiff, bends permanently past its yield stress"),
}


def apply_preset(settings, key: str) -> None:
    """Set the object's material model, E, nu and density together from MATERIAL_PRESETS."""
    _label, model, E, nu, rho, _desc = MATERIAL_PRESETS[key]
    settings.material_model = model
    settings.youngs_modulus = E
    settings.poisson_ratio = nu
    settings.density = rho
    settings.stiffness_unit = pressure_unit(E)


def materials_path(out_dir) -> Path:
    return Path(out_dir) / protocol.MATERIALS_FILE
