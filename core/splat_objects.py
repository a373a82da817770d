"""Splat objects: a mesh of loose points whose POINT attributes are the 3DGS PLY properties.

A splat object is a MESH with vertices only. Each vertex is one Gaussian; its FLOAT point attributes
carry the PLY properties by name: f_dc_0..2, f_rest_* (channel-major), opacity (logit),
scale_0..2 (log), rot_0..3 (quaternion wxyz), and nx/ny/nz when the file had normals. Any other
per-vertex property of the file is kept as an attribute too, and its PLY type is remembered in the
mesh custom property ``splat_ply_types`` so export writes it back unchanged.

Everything goes through numpy and foreach_get/foreach_set (never a per-vertex Python loop), so a
million splats import in seconds. Every check happens before the first datablock is created: a
failed import or export leaves nothing behind.

World transform on export: the object's matrix_world is applied to positions, rotations and scales
(default). For a similarity transform (rotation + uniform scale) this is exact and cheap; for a
non-uniform scale or shear each covariance A A^T with A = M R diag(s) is re-diagonalised by an SVD
of A, which is exact for the Gaussian (the principal axes change, so rot/scale change accordingly).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import bpy
import numpy as np

from ..backend.geometry.shape import quat_to_matrix  # one home, numpy only
from ..backend.io import ply, sh
from . import look as look_mod  # 'look' is import_splats' flag

SH_C0 = ply.SH_C0
DC_NAMES = ("f_dc_0", "f_dc_1", "f_dc_2")
SCALE_NAMES = ("scale_0", "scale_1", "scale_2")
ROT_NAMES = ("rot_0", "rot_1", "rot_2", "rot_3")
NORMAL_NAMES = ("nx", "ny", "nz")
OPACITY_NAME = "opacity"
REQUIRED_NAMES = DC_NAMES + (OPACITY_NAME,) + SCALE_NAMES + ROT_NAMES
TYPES_PROP = "splat_ply_types"  # mesh custom property: JSON {extra property: numpy dtype string}

# Attribute names Blender owns or that would shadow built-in data: extras with these names are skipped.
_RESERVED = {"position", "id", "radius", "material_index", "sharp_face", "sharp_edge", "crease_vert",
             "crease_edge", "uv_seam", "normal"}
_FOREACH_KEY = {
    "FLOAT": "value", "INT": "value", "INT8": "value", "BOOLEAN": "value", "QUATERNION": "value",
    "FLOAT_VECTOR": "vector", "FLOAT2": "vector", "INT32_2D": "value",
    "FLOAT_COLOR": "color", "BYTE_COLOR": "color", "FLOAT4X4": "value",
}
_WIDTH = {"FLOAT": 1, "INT": 1, "INT8": 1, "BOOLEAN": 1, "FLOAT_VECTOR": 3, "FLOAT2": 2, "INT32_2D": 2,
          "FLOAT_COLOR": 4, "BYTE_COLOR": 4, "QUATERNION": 4, "FLOAT4X4": 16}


class SplatError(ValueError):
    """A splat object or file cannot be used; the message says what to fix."""


# ------------------------------------------------------------------------------------------ attributes
def _infer_type(arr: np.ndarray) -> str:
    width = 1 if arr.ndim == 1 else arr.shape[1]
    if arr.dtype.kind == "b":
        return "BOOLEAN"
    if arr.dtype.kind in "iu":
        return "INT" if width == 1 else "INT32_2D"
    return {1: "FLOAT", 2: "FLOAT2", 3: "FLOAT_VECTOR", 4: "FLOAT_COLOR", 16: "FLOAT4X4"}.get(width, "")


def _as_buffer(arr: np.ndarray, data_type: str) -> np.ndarray:
    if data_type in ("INT", "INT8", "INT32_2D"):
        return np.ascontiguousarray(arr, dtype=np.int32).ravel()
    if data_type == "BOOLEAN":
        return np.ascontiguousarray(arr, dtype=bool).ravel()
    return np.ascontiguousarray(arr, dtype=np.float32).ravel()


def set_point_attributes(mesh, arrays: dict, types: dict | None = None) -> None:
    """Create or overwrite POINT attributes of ``mesh`` from numpy arrays (name -> (N,) or (N, k)).

    Types are inferred (float 1-D FLOAT, (N,2) FLOAT2, (N,3) FLOAT_VECTOR, (N,4) FLOAT_COLOR, int INT,
    bool BOOLEAN) unless ``types`` names one (e.g. {"rotations": "QUATERNION"}). All arrays are checked
    before anything changes, so a bad array leaves the mesh untouched.
    """
    types = types or {}
    n = len(mesh.vertices)
    plan = []
    for name, values in arrays.items():
        arr = np.asarray(values)
        data_type = types.get(name) or _infer_type(arr)
        if not data_type or data_type not in _WIDTH:
            raise SplatError(f"attribute {name!r}: cannot store an array of shape {arr.shape} and dtype {arr.dtype}")
        width = _WIDTH[data_type]
        if arr.shape[0:1] != (n,) or int(np.prod(arr.shape[1:], dtype=np.int64)) != width:
            raise SplatError(f"attribute {name!r}: expected {n} rows of {width} value(s) for {data_type}, "
                             f"got shape {arr.shape}")
        if not name or name.startswith("."):
            raise SplatError(f"attribute name {name!r} is empty or reserved (names starting with '.')")
        plan.append((name, data_type, arr))
    for name, data_type, arr in plan:
        attr = mesh.attributes.get(name)
        if attr is not None and (attr.domain != "POINT" or attr.data_type != data_type):
            if name == "position":
                raise SplatError("'position' is Blender's built-in point position (FLOAT_VECTOR)")
            mesh.attributes.remove(attr)
            attr = None
        if attr is None:
            attr = mesh.attributes.new(name, data_type, "POINT")
        if n:
            attr.data.foreach_set(_FOREACH_KEY[data_type], _as_buffer(arr, data_type))
    mesh.update()


def _attr_array(mesh, name: str, width: int = 1) -> np.ndarray | None:
    """A POINT attribute as float32 (N,) or (N, width); None when absent. Wrong domain is an error."""
    attr = mesh.attributes.get(name)
    if attr is None:
        return None
    if attr.domain != "POINT":
        raise SplatError(f"attribute '{name}' is on the {attr.domain} domain; splat attributes must be on points")
    n = len(mesh.vertices)
    key = _FOREACH_KEY.get(attr.data_type)
    w = _WIDTH.get(attr.data_type)
    if key is None or attr.data_type == "BOOLEAN" and width != 1:
        raise SplatError(f"attribute '{name}' has type {attr.data_type}, which cannot be read as splat data")
    if attr.data_type in ("INT", "INT8", "INT32_2D"):
        buf = np.empty(n * w, np.int32)
    elif attr.data_type == "BOOLEAN":
        buf = np.empty(n, bool)
    else:
        buf = np.empty(n * w, np.float32)
    if n:
        attr.data.foreach_get(key, buf)
    return buf if w == 1 else buf.reshape(n, w)


def _float_group(mesh, names) -> np.ndarray | None:
    cols = [_attr_array(mesh, nm) for nm in names]
    present = [c is not None for c in cols]
    if not any(present):
        return None
    if not all(present):
        missing = [nm for nm, p in zip(names, present) if not p]
        raise SplatError(f"the object has {', '.join(nm for nm, p in zip(names, present) if p)} "
                         f"but not {', '.join(missing)}")
    return np.stack([c.astype(np.float32, copy=False) for c in cols], axis=1)


def _rest_names(mesh) -> list[str]:
    """The mesh's f_rest_* attribute names in coefficient order (zero-padded names too, e.g. f_rest_07)."""
    found: dict[int, str] = {}
    for attr in mesh.attributes:
        if attr.name.startswith("f_rest_") and attr.name[7:].isdigit():
            i = int(attr.name[7:])
            if i in found:
                raise SplatError(f"attributes '{found[i]}' and '{attr.name}' both mean f_rest_{i}; remove one")
            found[i] = attr.name
    return [found[i] for i in sorted(found)]


def local_positions(mesh) -> np.ndarray:
    n = len(mesh.vertices)
    co = np.empty(n * 3, np.float32)
    if n:
        mesh.vertices.foreach_get("co", co)
    return co.reshape(n, 3)


# ------------------------------------------------------------------------------------------ validation
def invalid_positions(positions: np.ndarray, what: str) -> str | None:
    """What is wrong with a point set's positions (none, or some not finite), or None: the one rule for
    imported splats and for the object handed to the simulator; each caller adds its own advice."""
    if len(positions) == 0:
        return f"{what} has no points"
    bad = ~np.isfinite(positions).all(axis=1)
    if bad.any():
        return f"{what} has {int(bad.sum())} of {len(positions)} points with invalid (NaN or infinite) positions"
    return None


def _check_positions(positions: np.ndarray, what: str) -> None:
    problem = invalid_positions(positions, what)
    if problem:
        raise SplatError(f"{problem}; fix or remove them first")


def _check_splats(splats: ply.Splats, what: str) -> None:
    """Positions, then every splat value against the PLY reader's ranges (one rule for both sides)."""
    _check_positions(splats.positions, what)
    problem = ply.splat_value_problem({k: getattr(splats, k) for k in ("positions", "f_dc", "f_rest", "opacity",
                                                                       "scale", "rotation")}, what)
    if problem:
        raise SplatError(problem)


# ------------------------------------------------------------------------------------------ conversions
def splat_attribute_arrays(splats: ply.Splats, columns=None) -> dict:
    """The standard splat properties as name -> contiguous float32 (N,) arrays (the attribute layout).

    ``columns`` (the PlyData the splats came from) supplies properties the file already holds as
    float32 columns, which saves transposing the (N, k) blocks back into columns.
    """
    def column(name):
        arr = columns.get(name) if columns is not None else None
        ok = arr is not None and arr.dtype == np.float32 and arr.ndim == 1 and arr.flags.c_contiguous
        return arr if ok and len(arr) == len(splats) else None

    out = {}
    blocks = [(DC_NAMES, splats.f_dc), (SCALE_NAMES, splats.scale), (ROT_NAMES, splats.rotation),
              ([f"f_rest_{i}" for i in range(splats.f_rest.shape[1])], splats.f_rest),
              ((OPACITY_NAME,), splats.opacity[:, None])]
    if splats.normals is not None:
        blocks.append((NORMAL_NAMES, splats.normals))
    for names, block in blocks:
        found = [column(nm) for nm in names]
        if any(c is None for c in found):
            rows = np.ascontiguousarray(np.asarray(block, np.float32).T)  # one transpose for the whole block
            found = [c if c is not None else rows[i] for i, c in enumerate(found)]
        out.update(zip(names, found))
    return out


def _default_splats(positions: np.ndarray, rgb: np.ndarray | None) -> ply.Splats:
    """Default scale/opacity/colour/rotation computed exactly as the PLY reader fills plain point clouds."""
    data = ply.PlyData({"x": positions[:, 0], "y": positions[:, 1], "z": positions[:, 2]})
    if rgb is not None:
        for i, nm in enumerate(("red", "green", "blue")):
            data[nm] = np.clip(rgb[:, i], 0.0, 1.0).astype(np.float32)
    return ply.splats_from_ply(data, source="the object")


def _point_colour(mesh) -> np.ndarray | None:
    """sRGB colour of a POINT-domain colour attribute (the active one first), as (N,3) in 0..1."""
    attrs = list(getattr(mesh, "color_attributes", []))
    active = getattr(mesh.color_attributes, "active_color", None) if attrs else None
    for attr in ([active] if active is not None else []) + attrs:
        if attr.domain == "POINT" and attr.data_type in ("FLOAT_COLOR", "BYTE_COLOR"):
            n = len(mesh.vertices)
            buf = np.empty(n * 4, np.float32)
            attr.data.foreach_get("color_srgb", buf)
            return buf.reshape(n, 4)[:, :3]
    return None


def _missing_required(mesh) -> list[str]:
    return [nm for nm in REQUIRED_NAMES if mesh.attributes.get(nm) is None]


def ensure_splat_attributes(obj) -> list[str]:
    """Give a mesh object the splat attributes it lacks (defaults as for plain PLY point clouds).

    Colour comes from a point colour attribute when there is one, else mid grey; opacity 0.9;
    isotropic scale of half the mean point spacing; identity rotation. Returns the names added.
    Raises SplatError (changing nothing) for a non-mesh, an empty mesh or NaN positions.
    """
    if obj is None or obj.type != "MESH":
        raise SplatError(f"'{getattr(obj, 'name', obj)}' is not a mesh object; splats live on mesh points")
    mesh = obj.data
    missing = _missing_required(mesh)
    if not missing:
        return []
    positions = local_positions(mesh)
    _check_positions(positions, f"'{obj.name}'")
    defaults = splat_attribute_arrays(_default_splats(positions, _point_colour(mesh)))
    for nm in REQUIRED_NAMES:
        attr = mesh.attributes.get(nm)
        if attr is not None and attr.domain != "POINT":
            raise SplatError(f"attribute '{nm}' is on the {attr.domain} domain; remove it or move it to points")
    set_point_attributes(mesh, {nm: defaults[nm] for nm in missing}, {nm: "FLOAT" for nm in missing})
    return missing


def is_splat_object(obj) -> bool:
    return obj is not None and obj.type == "MESH" and not _missing_required(obj.data)


# ------------------------------------------------------------------------------------------ quaternions
def matrix_to_quat(m: np.ndarray) -> np.ndarray:
    """(N,3,3) proper rotations -> (N,4) unit wxyz with w >= 0 (Shepperd's branch-per-row method)."""
    m = np.asarray(m, np.float64)
    n = len(m)
    q = np.empty((n, 4))
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    diag = np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], axis=1)
    case = np.where(tr > diag.max(axis=1), 3, diag.argmax(axis=1))
    for c in range(4):
        s = case == c
        if not s.any():
            continue
        a = m[s]
        if c == 3:
            r = np.sqrt(np.maximum(1 + tr[s], 1e-30)) * 2
            q[s] = np.stack([0.25 * r, (a[:, 2, 1] - a[:, 1, 2]) / r, (a[:, 0, 2] - a[:, 2, 0]) / r,
                             (a[:, 1, 0] - a[:, 0, 1]) / r], axis=1)
        else:
            i, j, k = c, (c + 1) % 3, (c + 2) % 3
            r = np.sqrt(np.maximum(1 + a[:, i, i] - a[:, j, j] - a[:, k, k], 1e-30)) * 2
            v = np.empty((len(a), 4))
            v[:, 0] = (a[:, k, j] - a[:, j, k]) / r
            v[:, 1 + i] = 0.25 * r
            v[:, 1 + j] = (a[:, j, i] + a[:, i, j]) / r
            v[:, 1 + k] = (a[:, k, i] + a[:, i, k]) / r
            q[s] = v
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of wxyz quaternions (broadcasting)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], axis=-1)


def transform_gaussians(m3: np.ndarray, rotation: np.ndarray, scale_linear: np.ndarray):
    """Apply a 3x3 linear map to Gaussians (rotation wxyz, linear scales): returns (rotation, scales).

    The covariance becomes M R S^2 R^T M^T. A similarity (rotation + uniform scale) keeps the axes; any
    other map (non-uniform scale, shear, mirror) is re-diagonalised exactly with an SVD of M R S.
    """
    m3 = np.asarray(m3, np.float64)
    det = np.linalg.det(m3)
    k = abs(det) ** (1.0 / 3.0)
    if k > 0 and det > 0 and np.allclose(m3.T @ m3, k * k * np.eye(3), rtol=1e-6, atol=1e-9 * k * k):
        q_m = matrix_to_quat((m3 / k)[None])[0]
        q = quat_multiply(q_m, np.asarray(rotation, np.float64))
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
        return q.astype(np.float32), (np.asarray(scale_linear, np.float64) * k).astype(np.float32)
    a = m3[None] @ quat_to_matrix(rotation) * np.asarray(scale_linear, np.float64)[:, None, :]
    u, s, _ = np.linalg.svd(a)
    u[:, :, 2] *= np.sign(np.linalg.det(u))[:, None]  # a column's sign does not change U S^2 U^T
    return matrix_to_quat(u).astype(np.float32), s.astype(np.float32)


# ------------------------------------------------------------------------------------------ axis conversion
def convert_axes(splats: ply.Splats, m3) -> ply.Splats:
    """The splats turned by the rotation ``m3`` (an axis conversion): positions, each splat's orientation,
    normals and view-dependent colour (SH bands rotated), so they look the same from the turned views."""
    m3 = np.asarray(m3, np.float64)
    if np.allclose(m3, np.eye(3)):
        return splats
    if not np.allclose(m3.T @ m3, np.eye(3), atol=1e-6) or np.linalg.det(m3) < 0:
        raise SplatError("the axis conversion must be a rotation (pick different Forward and Up axes)")
    rot, scale = transform_gaussians(m3, splats.rotation, np.exp(splats.scale.astype(np.float64)))
    return ply.Splats(
        positions=(splats.positions.astype(np.float64) @ m3.T).astype(np.float32), f_dc=splats.f_dc,
        f_rest=sh.rotate_f_rest(splats.f_rest, m3), opacity=splats.opacity,
        scale=np.log(np.maximum(scale, 1e-30)).astype(np.float32), rotation=rot,
        normals=None if splats.normals is None else (splats.normals.astype(np.float64) @ m3.T).astype(np.float32),
        extras=splats.extras, comments=splats.comments)


# ------------------------------------------------------------------------------------------ object -> arrays
def splat_arrays(obj, world: bool = True) -> dict:
    """The splat data of a mesh object as numpy arrays, in the scene.npz layout of backend.protocol.

    Keys: positions (N,3), f_dc (N,3), f_rest (N,3K), opacity (N,), scale (N,3) log, rotation (N,4)
    wxyz, and normals (N,3) when present. ``world=True`` applies matrix_world to positions, rotations,
    scales and normals. Missing splat attributes are filled with defaults in memory (the object is not
    changed). Reads the original mesh, not the evaluated (modified) one.
    """
    if obj is None or obj.type != "MESH":
        raise SplatError(f"'{getattr(obj, 'name', obj)}' is not a mesh object")
    mesh = obj.data
    positions = local_positions(mesh)
    dc, scale, rot = (_float_group(mesh, names) for names in (DC_NAMES, SCALE_NAMES, ROT_NAMES))
    opacity = _attr_array(mesh, OPACITY_NAME)
    normals = _float_group(mesh, NORMAL_NAMES)
    rest_names = _rest_names(mesh)
    f_rest = (np.stack([_attr_array(mesh, nm).astype(np.float32, copy=False) for nm in rest_names], axis=1)
              if rest_names else np.zeros((len(positions), 0), np.float32))
    if any(v is None for v in (dc, scale, rot, opacity)) and len(positions):
        defaults = _default_splats(positions if np.isfinite(positions).all() else np.nan_to_num(positions),
                                   _point_colour(mesh))
        dc = defaults.f_dc if dc is None else dc
        scale = defaults.scale if scale is None else scale
        rot = defaults.rotation if rot is None else rot
        opacity = defaults.opacity if opacity is None else opacity
    n = len(positions)
    out = {
        "positions": positions,
        "f_dc": dc if dc is not None else np.zeros((n, 3), np.float32),
        "f_rest": f_rest,
        "opacity": (opacity if opacity is not None else np.zeros(n, np.float32)).astype(np.float32, copy=False),
        "scale": scale if scale is not None else np.zeros((n, 3), np.float32),
        "rotation": rot if rot is not None else np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
    }
    if normals is not None:
        out["normals"] = normals
    if world and n:
        _apply_world(out, np.array(obj.matrix_world, dtype=np.float64))
    return out


def _apply_world(arrays: dict, mw: np.ndarray) -> None:
    if np.allclose(mw, np.eye(4)):
        return
    m3, t = mw[:3, :3], mw[:3, 3]
    arrays["positions"] = (arrays["positions"].astype(np.float64) @ m3.T + t).astype(np.float32)
    rot, s = transform_gaussians(m3, arrays["rotation"], np.exp(arrays["scale"].astype(np.float64)))
    arrays["rotation"] = rot
    arrays["scale"] = np.log(np.maximum(s, 1e-30)).astype(np.float32)
    if "normals" in arrays:
        nrm = arrays["normals"].astype(np.float64) @ np.linalg.inv(m3)  # inverse transpose, row vectors
        length = np.linalg.norm(nrm, axis=1, keepdims=True)
        arrays["normals"] = np.where(length > 0, nrm / np.where(length > 0, length, 1), 0).astype(np.float32)


def extra_arrays(obj) -> dict:
    """Non-standard PLY properties kept on the object, cast back to their file types."""
    mesh = obj.data
    types = _ply_types(mesh)
    out = {}
    for name, dtype in types.items():
        arr = _attr_array(mesh, name)
        if arr is not None:
            out[name] = arr.astype(np.dtype(dtype))
    return out


def _ply_types(mesh) -> dict:
    try:
        types = json.loads(mesh.get(TYPES_PROP, "{}"))
        return types if isinstance(types, dict) else {}
    except (TypeError, ValueError):
        return {}


# ------------------------------------------------------------------------------------------ import / export
def _extras_plan(splats: ply.Splats, warnings: list | None) -> tuple[dict, dict]:
    arrays, types = {}, {}
    for name, values in splats.extras.items():
        arr = np.asarray(values)
        if name in _RESERVED or name.startswith(".") or len(name.encode()) > 63:
            if warnings is not None:
                warnings.append(f"property '{name}' was not imported (its name is reserved in Blender)")
            continue
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            arr = np.nan_to_num(arr)
        arrays[name] = arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int32)
        types[name] = arr.dtype.str.lstrip("<>=|")
    return arrays, types


def create_splat_object(splats: ply.Splats, name: str, collection=None, warnings: list | None = None,
                        columns=None):
    """Validate ``splats`` and build their mesh object in ``collection`` (nothing is created on error)."""
    _check_splats(splats, f"'{name}'")
    extras, types = _extras_plan(splats, warnings)
    attrs = splat_attribute_arrays(splats, columns)
    mesh = bpy.data.meshes.new(name)
    try:
        mesh.vertices.add(len(splats))
        mesh.vertices.foreach_set("co", np.ascontiguousarray(splats.positions, np.float32).ravel())
        set_point_attributes(mesh, attrs, {k: "FLOAT" for k in attrs})
        if extras:
            set_point_attributes(mesh, extras)
            mesh[TYPES_PROP] = json.dumps(types)
        mesh.update()
        obj = bpy.data.objects.new(name, mesh)
    except BaseException:
        bpy.data.meshes.remove(mesh)
        raise
    (collection or bpy.context.scene.collection).objects.link(obj)
    return obj


def import_splats(filepath, context=None, name: str | None = None, *, look: bool = True,
                  warnings: list | None = None, axis_matrix=None):
    """Read a 3DGS PLY (or a plain point-cloud PLY) into a new splat object and return it.

    Raises ply.PlyError / SplatError (both ValueError) before creating anything when the file is
    unreadable, lacks x/y/z, has no points or has NaN values. ``look`` adds the splat look modifier.
    ``axis_matrix`` (3x3 rotation, file axes -> Blender's) converts a capture saved with other axes.
    """
    filepath = os.fspath(filepath)
    data = ply.read_ply(filepath)
    splats = ply.splats_from_ply(data, source=filepath)
    if axis_matrix is not None and not np.allclose(axis_matrix, np.eye(3)):
        splats, data = convert_axes(splats, axis_matrix), None  # the file's columns no longer apply
    name = name or Path(filepath).stem or "Splats"
    context = context or bpy.context
    collection = getattr(context, "collection", None) or context.scene.collection
    obj = create_splat_object(splats, name, collection, warnings, columns=data)
    if look:
        look_mod.apply_splat_look(obj, source="attributes")
    return obj


def export_splats(obj, filepath, *, apply_transform: bool = True, format: str = "binary_little_endian",
                  axis_matrix=None) -> int:
    """Write ``obj`` as a 3DGS PLY (standard property order plus its extra properties). Returns N.

    ``axis_matrix`` (3x3 rotation, Blender's axes -> the file's) writes it for another axis convention.

    Raises SplatError (writing nothing) for a non-mesh, an empty object or NaN positions.
    """
    if obj is None or obj.type != "MESH":
        raise SplatError(f"'{getattr(obj, 'name', obj)}' is not a mesh object; select a splat or point object")
    positions = local_positions(obj.data)
    _check_positions(positions, f"'{obj.name}'")
    arrays = splat_arrays(obj, world=apply_transform)
    try:
        splats = ply.Splats(arrays["positions"], arrays["f_dc"], arrays["f_rest"], arrays["opacity"],
                            arrays["scale"], arrays["rotation"], arrays.get("normals"), extra_arrays(obj))
    except ValueError as exc:
        raise SplatError(f"'{obj.name}' cannot be written as splats: {exc}") from None
    if axis_matrix is not None:
        splats = convert_axes(splats, axis_matrix)
    _check_splats(splats, f"'{obj.name}'")
    ply.write_splats(filepath, splats, format=format)
    return len(splats)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def dc_to_rgb(f_dc: np.ndarray) -> np.ndarray:
    """Display colour of the SH DC term, clamped to 0..1 (the splat look uses the same formula)."""
    return np.clip(0.5 + SH_C0 * np.asarray(f_dc, np.float64), 0.0, 1.0)


def evaluated_points(obj, depsgraph=None) -> dict:
    """Evaluated point positions (local) and point attributes of ``obj`` with its splat look switched off.

    For tests and tools that need the bake-driven point data rather than the instanced splats.
    Returns {"positions": (N,3), name: array for each POINT attribute readable as floats}.
    """
    mods = [m for m in obj.modifiers if look_mod.is_look_modifier(m)]
    states = [m.show_viewport for m in mods]
    try:
        for m in mods:
            m.show_viewport = False
        dg = depsgraph or bpy.context.evaluated_depsgraph_get()
        dg.update()
        ev = obj.evaluated_get(dg)
        mesh = ev.data
        out = {"positions": local_positions(mesh)}
        for attr in mesh.attributes:
            if attr.domain == "POINT" and not attr.name.startswith(".") and attr.name != "position" \
                    and attr.data_type in ("FLOAT", "FLOAT_VECTOR", "QUATERNION", "FLOAT_COLOR", "INT"):
                out[attr.name] = _attr_array(mesh, attr.name)
        return out
    finally:
        for m, s in zip(mods, states):
            m.show_viewport = s
        if depsgraph is None:
            bpy.context.evaluated_depsgraph_get().update()


__all__ = [
    "SplatError", "set_point_attributes", "ensure_splat_attributes", "is_splat_object", "splat_arrays",
    "extra_arrays", "import_splats", "export_splats", "create_splat_object", "splat_attribute_arrays",
    "transform_gaussians", "quat_to_matrix", "matrix_to_quat", "quat_multiply", "local_positions",
    "evaluated_points", "dc_to_rgb", "sigmoid", "SH_C0", "convert_axes",
]
