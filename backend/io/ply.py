"""3D Gaussian splat PLY files: a generic vertex-element reader/writer and a splat view of it.

numpy + standard library only: both the backend and Blender's Python import this module.

Reading builds one numpy structured dtype from the header and maps the whole vertex block
with a single np.fromfile call (no per-vertex Python), so a million splats read in well under
a second. Property order, type spelling and comments are kept, which makes read -> write
byte-identical for binary files this module (or the reference 3DGS trainer) writes.

Splat conventions (3DGS PLY): f_dc_0..2 and f_rest_* in channel-major order (all red
coefficients, then green, then blue), opacity as a logit, scale_0..2 as log scale,
rot_0..3 a quaternion w first (not necessarily normalised).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field

import numpy as np

from .atomic import atomic_path

__all__ = [
    "SH_C0",
    "PlyError",
    "PlyData",
    "read_ply",
    "write_ply",
    "Splats",
    "read_splats",
    "write_splats",
    "splats_from_ply",
    "splats_to_ply",
    "splat_property_names",
    "sh_degree_from_rest_count",
    "splat_value_problem",
    "check_splat_values",
]

SH_C0 = 0.28209479177387814  # zeroth-order real spherical harmonic, 1 / (2 sqrt(pi))

# PLY type name -> numpy type code without byte order. Both the classic and the sized
# spellings occur in the wild; the spelling read is remembered so writing can repeat it.
_PLY_TYPES = {
    "char": "i1", "int8": "i1",
    "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4",
    "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4",
    "double": "f8", "float64": "f8",
}
_CANONICAL_NAMES = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
                    "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}
_BYTE_ORDER = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": "<"}
_HEADER_LIMIT = 1 << 20  # a 3DGS header is ~2 KB; anything without end_header by 1 MB is not a PLY

_DEFAULT_OPACITY = 0.9
_IDENTITY_WXYZ = (1.0, 0.0, 0.0, 0.0)
_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest_* -> SH degree


class PlyError(ValueError):
    """A PLY file (or data meant for one) is unreadable or invalid; the message names the file."""


def _code(dtype: np.dtype) -> str:
    return f"{dtype.kind}{dtype.itemsize}"


# --------------------------------------------------------------------------------------
# Generic vertex-element data
# --------------------------------------------------------------------------------------

class PlyData(MutableMapping):
    """Ordered mapping property name -> 1-D numpy array (all of length `count`), plus the
    header facts needed to write the file back: comments, obj_info lines, element name,
    format, version and the type spelling of each property."""

    def __init__(self, arrays: Mapping[str, np.ndarray] | None = None, *, count: int | None = None,
                 comments=(), obj_info=(), element_name: str = "vertex",
                 format: str = "binary_little_endian", version: str = "1.0",
                 type_names: Mapping[str, str] | None = None):
        if format not in _BYTE_ORDER:
            raise ValueError(f"unknown PLY format {format!r}; use one of {sorted(_BYTE_ORDER)}")
        self._arrays: dict[str, np.ndarray] = {}
        self._count = count
        self.comments = list(comments)
        self.obj_info = list(obj_info)
        self.element_name = element_name
        self.format = format
        self.version = version
        self.type_names = dict(type_names or {})
        for name, values in (arrays or {}).items():
            self[name] = values

    @property
    def count(self) -> int:
        return 0 if self._count is None else self._count

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]

    def __setitem__(self, name: str, values) -> None:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"property {name!r} must be a 1-D array, got shape {arr.shape}")
        if self._count is None:
            self._count = len(arr)
        elif len(arr) != self._count:
            raise ValueError(f"property {name!r} has {len(arr)} values but the element has {self._count}")
        self._arrays[name] = arr

    def __delitem__(self, name: str) -> None:
        del self._arrays[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._arrays)

    def __len__(self) -> int:
        return len(self._arrays)

    def __repr__(self) -> str:
        props = ", ".join(f"{k}:{v.dtype}" for k, v in self._arrays.items())
        return f"PlyData({self.element_name} x {self.count}, {self.format}, [{props}])"


# --------------------------------------------------------------------------------------
# Header parsing
# --------------------------------------------------------------------------------------

@dataclass
class _Element:
    name: str
    count: int
    props: list = field(default_factory=list)  # (name, type spelling) or (name, "list")


@dataclass
class _Header:
    format: str = ""
    version: str = "1.0"
    comments: list = field(default_factory=list)
    obj_info: list = field(default_factory=list)
    elements: list = field(default_factory=list)


_END_HEADER = re.compile(rb"\nend_header[ \t]*\r?\n")
_END_HEADER_AT_EOF = re.compile(rb"\nend_header[ \t\r]*$")


def _read_header_bytes(f, path: str) -> tuple[bytes, int]:
    """Return the header text before the end_header line and the offset of the first data byte."""
    buf = f.read(4096)
    if not (buf.startswith(b"ply\n") or buf.startswith(b"ply\r\n")):
        raise PlyError(f"{path}: not a PLY file (it does not start with the 'ply' magic line)")
    while True:
        m = _END_HEADER.search(buf)
        if m:
            return buf[:m.start()], m.end()
        chunk = f.read(65536)
        if not chunk:
            m = _END_HEADER_AT_EOF.search(buf)
            if m:  # header-only file (no data, no final newline)
                return buf[:m.start()], len(buf)
            raise PlyError(f"{path}: truncated PLY header (no 'end_header' line)")
        buf += chunk
        if len(buf) > _HEADER_LIMIT:
            raise PlyError(f"{path}: PLY header has no 'end_header' line within the first 1 MB")


def _parse_header(raw: bytes, path: str) -> _Header:
    # surrogateescape keeps odd bytes in comments so they round-trip unchanged
    text = raw.decode("utf-8", "surrogateescape")
    header = _Header()
    for lineno, line in enumerate(text.split("\n")[1:], start=2):
        line = line.rstrip("\r")
        tokens = line.split()
        if not tokens:
            continue
        key = tokens[0]
        if key in ("comment", "obj_info"):
            rest = line[len(key):]
            (header.comments if key == "comment" else header.obj_info).append(
                rest[1:] if rest.startswith(" ") else rest)
        elif key == "format":
            if len(tokens) < 2 or tokens[1] not in _BYTE_ORDER:
                raise PlyError(f"{path}: unsupported PLY format line {line!r} (line {lineno})")
            header.format = tokens[1]
            header.version = tokens[2] if len(tokens) > 2 else "1.0"
        elif key == "element":
            if len(tokens) != 3 or not tokens[2].isdigit():
                raise PlyError(f"{path}: malformed element line {line!r} (line {lineno})")
            header.elements.append(_Element(tokens[1], int(tokens[2])))
        elif key == "property":
            if not header.elements:
                raise PlyError(f"{path}: property before any element (line {lineno})")
            props = header.elements[-1].props
            if len(tokens) >= 5 and tokens[1] == "list":
                props.append((tokens[4], "list"))
            elif len(tokens) == 3 and tokens[1] in _PLY_TYPES:
                if any(p[0] == tokens[2] for p in props):
                    raise PlyError(f"{path}: property {tokens[2]!r} is declared twice (line {lineno})")
                props.append((tokens[2], tokens[1]))
            else:
                raise PlyError(f"{path}: unsupported property line {line!r} (line {lineno})")
        else:
            raise PlyError(f"{path}: unexpected PLY header line {line!r} (line {lineno})")
    if not header.format:
        raise PlyError(f"{path}: PLY header has no 'format' line")
    if not header.elements:
        raise PlyError(f"{path}: PLY header declares no elements")
    return header


def _pick_vertex(header: _Header) -> int:
    for i, el in enumerate(header.elements):
        if el.name == "vertex":
            return i
    return 0  # some tools name the only element differently ("point", ...)


# --------------------------------------------------------------------------------------
# read_ply / write_ply
# --------------------------------------------------------------------------------------

def read_ply(path: str | os.PathLike) -> PlyData:
    """Read the vertex element of a PLY file (binary little/big endian or ASCII).

    Values come back as contiguous native-endian arrays with the file's dtypes. Elements
    after the vertex element (faces, ...) are ignored. Raises PlyError for anything that is
    not a readable PLY file, including missing files.
    """
    return _read_ply(os.fspath(path), contiguous=True)


def _read_ply(path: str, contiguous: bool) -> PlyData:
    """contiguous=False leaves binary columns as strided views into the record table, which
    saves a full transpose when the caller regroups columns anyway (read_splats)."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise PlyError(f"{path}: cannot open PLY file ({exc.strerror or exc})") from exc
    with f:
        raw, data_start = _read_header_bytes(f, path)
        header = _parse_header(raw, path)
        vi = _pick_vertex(header)
        element = header.elements[vi]
        for name, kind in element.props:
            if kind == "list":
                raise PlyError(f"{path}: element {element.name!r} has list property {name!r}; "
                               "list properties are not supported in the vertex element "
                               "(splat and point-cloud files have only scalar properties)")
        data = PlyData(count=element.count, comments=header.comments, obj_info=header.obj_info,
                       element_name=element.name, format=header.format, version=header.version,
                       type_names={n: t for n, t in element.props})
        if not element.props or element.count == 0:
            for name, kind in element.props:
                data[name] = np.zeros(0, dtype=_PLY_TYPES[kind])
            return data
        if header.format == "ascii":
            columns = _read_ascii(f, data_start, header, vi, path)
        else:
            columns = _read_binary(f, data_start, header, vi, path, contiguous)
    for name, values in columns:
        data[name] = values
    return data


def _read_binary(f, data_start: int, header: _Header, vi: int, path: str, contiguous: bool):
    order = _BYTE_ORDER[header.format]
    skip = 0
    for el in header.elements[:vi]:
        if any(kind == "list" for _, kind in el.props):
            raise PlyError(f"{path}: element {el.name!r} with list properties comes before the "
                           "vertex element; such files are not supported")
        skip += el.count * np.dtype([(n, order + _PLY_TYPES[k]) for n, k in el.props]).itemsize
    element = header.elements[vi]
    dtype = np.dtype([(n, order + _PLY_TYPES[k]) for n, k in element.props])
    need = element.count * dtype.itemsize
    have = os.fstat(f.fileno()).st_size - data_start - skip
    if have < need:
        raise PlyError(f"{path}: truncated PLY data: the header declares {element.count} "
                       f"{element.name} records ({need} bytes) but only {max(have, 0)} bytes follow")
    f.seek(data_start + skip)
    table = np.fromfile(f, dtype=dtype, count=element.count)
    if len(table) != element.count:
        raise PlyError(f"{path}: truncated PLY data (read {len(table)} of {element.count} records)")
    if contiguous:
        return _split_columns(table, element.props)
    if table.dtype != table.dtype.newbyteorder("="):
        table = table.astype(table.dtype.newbyteorder("="))
    return [(name, table[name]) for name, _ in element.props]


# Rows per block when converting between the file's record layout and per-property columns.
# Blocks this small stay in cache; whole-array strided copies are ~8x slower for 62 columns.
_BLOCK_ROWS = 1024


def _rows_to_columns(rows: np.ndarray, dtype) -> np.ndarray:
    """(n, k) matrix -> contiguous (k, n) matrix of `dtype`, a blocked transpose."""
    n, k = rows.shape
    out = np.empty((k, n), dtype=dtype)
    for i in range(0, n, _BLOCK_ROWS):
        out[:, i:i + _BLOCK_ROWS] = rows[i:i + _BLOCK_ROWS].T
    return out


def _adjacent_block(columns: list) -> np.ndarray | None:
    """If the 1-D columns are neighbouring fields of one record table (as read_splats' views
    are), return them as one strided (n, k) view, which numpy copies far faster than k columns."""
    first = columns[0]
    if first.ndim != 1 or first.base is None:
        return None
    step, ptr = first.dtype.itemsize, first.__array_interface__["data"][0]
    for j, c in enumerate(columns):
        if (c.ndim != 1 or c.dtype != first.dtype or c.strides != first.strides or c.base is not first.base
                or len(c) != len(first) or c.__array_interface__["data"][0] != ptr + j * step):
            return None
    return np.lib.stride_tricks.as_strided(first, shape=(len(first), len(columns)),
                                           strides=(first.strides[0], step), writeable=False)


def _columns_to_rows(columns: list, out: np.ndarray) -> np.ndarray:
    """1-D columns and/or 2-D column groups -> the (n, k) matrix `out`, block by block."""
    if not columns:
        return out
    block = _adjacent_block(columns)
    if block is not None:
        out[...] = block
        return out
    parts = [c[:, None] if c.ndim == 1 else c for c in columns]
    for i in range(0, len(out), _BLOCK_ROWS):
        np.concatenate([p[i:i + _BLOCK_ROWS] for p in parts], axis=1, out=out[i:i + _BLOCK_ROWS],
                       casting="same_kind")
    return out


def _split_columns(table: np.ndarray, props) -> list:
    """Record table -> contiguous native-endian columns."""
    n, names = len(table), [name for name, _ in props]
    if len({_PLY_TYPES[k] for _, k in props}) == 1:
        # One shared type (the usual all-float 3DGS file): view the records as an (n, k)
        # matrix and transpose it in one pass.
        base = table.dtype[0]
        block = _rows_to_columns(table.view(base).reshape(n, len(names)), base.newbyteorder("="))
        return list(zip(names, block))
    columns = [np.empty(n, dtype=table.dtype[name].newbyteorder("=")) for name in names]
    for i in range(0, n, _BLOCK_ROWS):
        part = table[i:i + _BLOCK_ROWS]
        for name, col in zip(names, columns):
            col[i:i + _BLOCK_ROWS] = part[name]
    return list(zip(names, columns))


def _join_columns(columns: list, dtype: np.dtype) -> np.ndarray:
    """Per-property columns -> record table with the file's dtype (inverse of _split_columns)."""
    n, names = len(columns[0]), dtype.names
    table = np.empty(n, dtype=dtype)
    if len({dtype[name] for name in names}) == 1:
        _columns_to_rows(columns, table.view(dtype[0]).reshape(n, len(names)))
        return table
    for i in range(0, n, _BLOCK_ROWS):
        part = table[i:i + _BLOCK_ROWS]
        for name, col in zip(names, columns):
            part[name] = col[i:i + _BLOCK_ROWS]
    return table


def _read_ascii(f, data_start: int, header: _Header, vi: int, path: str):
    element = header.elements[vi]
    skip = sum(el.count for el in header.elements[:vi])  # one line per record, lists included
    f.seek(data_start)
    lines = f.read().split(b"\n")
    rows = lines[skip:skip + element.count]
    if len(rows) < element.count or (rows and not rows[-1].strip()):
        raise PlyError(f"{path}: truncated ASCII PLY data: expected {element.count} "
                       f"{element.name} lines")
    tokens = b" ".join(rows).split()
    nprops = len(element.props)
    if len(tokens) != element.count * nprops:
        raise PlyError(f"{path}: malformed ASCII PLY data: expected {nprops} values on each of "
                       f"{element.count} {element.name} lines, found {len(tokens)} values in all")
    try:
        table = np.array(tokens, dtype=np.float64).reshape(element.count, nprops)
    except ValueError as exc:
        raise PlyError(f"{path}: non-numeric value in ASCII PLY data ({exc})") from exc
    return [(name, np.ascontiguousarray(table[:, i]).astype(_PLY_TYPES[kind]))
            for i, (name, kind) in enumerate(element.props)]


def write_ply(path: str | os.PathLike, data: Mapping[str, np.ndarray], *, format: str | None = None,
              comments=None, obj_info=None, element_name: str | None = None) -> None:
    """Write `data` (name -> 1-D array, in order) as a single-element PLY file, atomically.

    Header facts not given default to those of a PlyData `data` (so read -> write is
    byte-identical), else to binary little endian, element 'vertex', no comments.
    Supported dtypes: int8/16/32, uint8/16/32, float32/64 (bool is written as uchar).
    """
    path = os.fspath(path)
    meta = data if isinstance(data, PlyData) else None
    fmt = format or (meta.format if meta else "binary_little_endian")
    if fmt not in _BYTE_ORDER:
        raise PlyError(f"{path}: unknown PLY format {fmt!r}; use one of {sorted(_BYTE_ORDER)}")
    comments = list(comments if comments is not None else (meta.comments if meta else []))
    obj_info = list(obj_info if obj_info is not None else (meta.obj_info if meta else []))
    element_name = element_name or (meta.element_name if meta else "vertex")
    spellings = meta.type_names if meta else {}

    columns, props = [], []
    count = meta.count if meta else None
    for name, values in data.items():
        arr = np.asarray(values)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        if not name or any(c.isspace() for c in name):
            raise PlyError(f"{path}: property name {name!r} is empty or contains whitespace")
        if arr.ndim != 1:
            raise PlyError(f"{path}: property {name!r} must be a 1-D array, got shape {arr.shape}")
        code = _code(arr.dtype)
        if arr.dtype.kind not in "iuf" or code not in _CANONICAL_NAMES:
            raise PlyError(f"{path}: property {name!r} has dtype {arr.dtype}, which PLY cannot store; "
                           "cast it to float32/float64 or an 8/16/32-bit integer first")
        if count is None:
            count = len(arr)
        if len(arr) != count:
            raise PlyError(f"{path}: property {name!r} has {len(arr)} values, expected {count}")
        spelled = spellings.get(name)
        props.append((name, spelled if spelled and _PLY_TYPES.get(spelled) == code
                      else _CANONICAL_NAMES[code]))
        columns.append(arr)
    count = count or 0
    header = _header_bytes(path, fmt, meta.version if meta else "1.0", comments, obj_info,
                           element_name, count, props)
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(header)
        if fmt == "ascii":
            _write_ascii(f, columns, count)
        elif columns and count:
            order = _BYTE_ORDER[fmt]
            table = _join_columns(columns, np.dtype([(n, order + _PLY_TYPES[t]) for n, t in props]))
            f.write(table.view(np.uint8).data)


def _header_bytes(path: str, fmt: str, version: str, comments, obj_info, element_name: str,
                  count: int, props) -> bytes:
    for line in list(comments) + list(obj_info) + [element_name]:
        if "\n" in line or "\r" in line:
            raise PlyError(f"{path}: header text {line!r} must not contain line breaks")
    head = ["ply", f"format {fmt} {version}"]
    head += [f"comment {c}" for c in comments] + [f"obj_info {c}" for c in obj_info]
    head.append(f"element {element_name} {count}")
    head += [f"property {t} {n}" for n, t in props]
    head.append("end_header\n")
    return "\n".join(head).encode("utf-8", "surrogateescape")


def _write_ascii(f, columns, count: int) -> None:
    if not columns or not count:
        return
    # %.9g / %.17g round-trip float32 / float64 exactly
    fmts = ["%.9g" if a.dtype == np.float32 else "%.17g" if a.dtype.kind == "f" else "%d" for a in columns]
    table = np.empty(count, dtype=[(f"c{i}", a.dtype) for i, a in enumerate(columns)])
    for i, arr in enumerate(columns):
        table[f"c{i}"] = arr
    np.savetxt(f, table, fmt=" ".join(fmts), newline="\n")


# --------------------------------------------------------------------------------------
# Splats
# --------------------------------------------------------------------------------------

def sh_degree_from_rest_count(n_rest: int) -> int:
    """SH degree for a number of f_rest_* properties (0, 9, 24 or 45)."""
    if n_rest not in _REST_COUNTS:
        raise ValueError(f"{n_rest} f_rest values per splat do not match an SH degree "
                         "(expected 0, 9, 24 or 45 for degree 0-3)")
    return _REST_COUNTS[n_rest]


def splat_property_names(sh_degree: int, normals: bool = True) -> list[str]:
    """Standard 3DGS property order: x y z [nx ny nz] f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3."""
    if sh_degree not in (0, 1, 2, 3):
        raise ValueError(f"SH degree must be 0-3, got {sh_degree}")
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    names = ["x", "y", "z"] + (["nx", "ny", "nz"] if normals else [])
    names += [f"f_dc_{i}" for i in range(3)] + [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)]
    return names


_STANDARD = re.compile(r"^(x|y|z|nx|ny|nz|opacity|f_dc_[0-2]|f_rest_\d+|scale_[0-2]|rot_[0-3])$")


def _f32(name: str, values, shape_tail: tuple) -> np.ndarray:
    arr = np.ascontiguousarray(values, dtype=np.float32)
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail:
        want = "(N" + "".join(f", {d}" for d in shape_tail) + ")"
        raise ValueError(f"Splats.{name} must have shape {want}, got {arr.shape}")
    return arr


@dataclass
class Splats:
    """Gaussian splats as arrays of N rows, float32, in 3DGS conventions.

    f_rest is (N, 3*K) in the file's channel-major order (K = 0, 3, 8 or 15 coefficients per
    channel). rotation is wxyz and is not normalised. extras holds any other per-splat
    properties (1-D arrays) in file order; comments are the PLY header comments.
    """

    positions: np.ndarray
    f_dc: np.ndarray
    f_rest: np.ndarray
    opacity: np.ndarray
    scale: np.ndarray
    rotation: np.ndarray
    normals: np.ndarray | None = None
    extras: dict = field(default_factory=dict)
    comments: list = field(default_factory=list)

    def __post_init__(self):
        self.positions = _f32("positions", self.positions, (3,))
        n = len(self.positions)
        self.f_dc = _f32("f_dc", self.f_dc, (3,))
        rest = np.asarray(self.f_rest, dtype=np.float32)
        if rest.size == 0 and rest.ndim != 2:
            rest = rest.reshape(n, 0)  # SH degree 0: accept any empty array
        if rest.ndim != 2:
            raise ValueError(f"Splats.f_rest must have shape (N, 3*K), got {rest.shape}")
        self.f_rest = np.ascontiguousarray(rest)
        sh_degree_from_rest_count(self.f_rest.shape[1])
        self.opacity = _f32("opacity", self.opacity, ())
        self.scale = _f32("scale", self.scale, (3,))
        self.rotation = _f32("rotation", self.rotation, (4,))
        if self.normals is not None:
            self.normals = _f32("normals", self.normals, (3,))
        for name in ("f_dc", "f_rest", "opacity", "scale", "rotation", "normals"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise ValueError(f"Splats.{name} has {len(arr)} rows but positions has {n}")
        extras = {}
        for name, values in self.extras.items():
            arr = np.asarray(values)
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(f"Splats.extras[{name!r}] must be a 1-D array of {n} values, got {arr.shape}")
            if _STANDARD.match(name):
                raise ValueError(f"Splats.extras[{name!r}] clashes with a standard splat property")
            extras[name] = arr
        self.extras = extras
        self.comments = list(self.comments)

    @property
    def count(self) -> int:
        return len(self.positions)

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_rest_count(self.f_rest.shape[1])

    def sh_coefficients(self) -> np.ndarray:
        """All SH coefficients as (N, (degree+1)^2, 3): DC first, then f_rest per coefficient."""
        k = self.f_rest.shape[1] // 3
        rest = self.f_rest.reshape(len(self), 3, k).transpose(0, 2, 1)
        return np.concatenate([self.f_dc[:, None, :], rest], axis=1)


def _group(data: Mapping[str, np.ndarray], names: list[str], source: str, n: int) -> np.ndarray | None:
    present = [nm for nm in names if nm in data]
    if not present:
        return None
    if len(present) != len(names):
        missing = [nm for nm in names if nm not in data]
        raise PlyError(f"{source}: has {', '.join(present)} but not {', '.join(missing)}")
    columns = [data[nm] for nm in names]
    return _columns_to_rows(columns, np.empty((n, len(names)), np.float32))


_INDEXED = re.compile(r"^(f_dc|f_rest|scale|rot)_(\d+)$")


def _standard_names(data: PlyData, source: str) -> dict[str, str]:
    """Canonical name (f_rest_7) -> the file's name for it (f_rest_7, or zero-padded: f_rest_07, f_rest_007).

    Padding is read when it is unambiguous; two properties that mean the same coefficient are refused.
    """
    out: dict[str, str] = {}
    for name in data:
        m = _INDEXED.match(name)
        canonical = f"{m.group(1)}_{int(m.group(2))}" if m else name
        if canonical in out:
            raise PlyError(f"{source}: properties '{out[canonical]}' and '{name}' both mean {canonical}; "
                           "the file is ambiguous")
        out[canonical] = name
    return out


def _rest_indices(names: Mapping[str, str], source: str) -> list[int]:
    """The f_rest_* indices, checked: numbered from 0 without gaps, 0, 9, 24 or 45 of them."""
    indices = sorted(int(k[7:]) for k in names if k.startswith("f_rest_"))
    if not indices:
        return []
    gap = next((i for i, k in enumerate(indices) if i != k), None)
    if gap is not None:
        raise PlyError(f"{source}: the SH properties skip f_rest_{gap} (found {len(indices)} f_rest_* properties, "
                       f"numbered {indices[0]}..{indices[-1]}); they must be numbered from 0 without gaps")
    if len(indices) not in _REST_COUNTS:
        raise PlyError(f"{source}: has {len(indices)} f_rest_* properties; SH degree 1, 2 or 3 needs 9, 24 or 45")
    return indices


# The PLY properties of each scene.npz splat array. Their bounds live in the contract
# (protocol.SCENE_ARRAYS), so a file the importer accepts is a scene the backend accepts.
_VALUE_GROUPS = (("positions", ("x", "y", "z")), ("f_dc", "f_dc_"), ("f_rest", "f_rest_"), ("opacity", ("opacity",)),
                 ("scale", "scale_"), ("rotation", "rot_"))


def splat_value_problem(arrays: Mapping[str, np.ndarray], source: str = "splats") -> str | None:
    """The first out-of-range splat value in ``arrays`` (keys as in Splats / scene.npz: positions, f_dc,
    f_rest, opacity, scale (log), rotation), as a message naming the point and the property; else None.

    Checks NaN/inf everywhere, the bounds of protocol.SCENE_ARRAYS, and that no rotation quaternion is zero.
    """
    from .. import protocol  # imported here: protocol itself imports this package

    first = None  # (point, message)
    for group, names in _VALUE_GROUPS:
        if group not in arrays or arrays[group] is None:
            continue
        spec = protocol.SCENE_ARRAYS[group]
        bounds = spec.bounds
        a = np.asarray(arrays[group])
        if a.size == 0:
            continue
        a = a.reshape(len(a), -1)
        lo, hi = bounds if bounds is not None else (-np.inf, np.inf)
        low, high = a.min(), a.max()  # NaN propagates: one pass each decides the common, clean case
        values_ok = bool(np.isfinite(low) and np.isfinite(high) and low >= lo and high <= hi)
        zero = ~a.any(axis=1) if group == "rotation" else None
        if values_ok and (zero is None or not zero.any()):
            continue
        bad = np.zeros(a.shape, bool) if values_ok else ~((a >= lo) & (a <= hi) & np.isfinite(a))
        rows = bad.any(axis=1)
        if zero is not None:
            rows |= zero
        if not rows.any():
            continue
        i = int(np.argmax(rows))
        if first is not None and first[0] <= i:
            continue
        if not bad[i].any():
            first = (i, f"{source}: point {i}: the rotation quaternion (rot_0..rot_3) is zero")
            continue
        k = int(np.argmax(bad[i]))
        name = names[k] if isinstance(names, tuple) else f"{names}{k}"
        value = float(a[i, k])
        why = "is NaN" if np.isnan(value) else "is infinite" if np.isinf(value) else \
            f"is out of range ({spec.doc}: {protocol.bounds_text(lo, hi)})"
        count = int(rows.sum())
        more = f"; {count} points have bad {group} values" if count > 1 else ""
        first = (i, f"{source}: point {i}: {name} = {value:g} {why}{more}")
    return None if first is None else first[1]


def check_splat_values(arrays: Mapping[str, np.ndarray], source: str = "splats") -> None:
    """Raise PlyError with splat_value_problem's message when a value is out of range."""
    problem = splat_value_problem(arrays, source)
    if problem:
        raise PlyError(problem)


def _colour01(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind in "iu":
        return values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
    values = values.astype(np.float32)
    # float colours are usually 0..1, but some tools write 0..255 as floats
    return values / np.float32(255.0) if values.size and values.max() > 1.0 + 1e-6 else values


def _default_log_scale(positions: np.ndarray) -> float:
    """Half the mean point spacing from the bounding box (cheap; no neighbour search)."""
    n = len(positions)
    if n == 0:
        return math.log(1e-3)
    extent = positions.max(axis=0).astype(np.float64) - positions.min(axis=0)
    live = extent[extent > 1e-9 * max(float(extent.max()), 1e-30)]
    if len(live) == 0 or extent.max() <= 0:
        return math.log(1e-3)  # all points coincide: pick 1 mm
    # spacing of N points spread over a volume / area / line, whichever the cloud spans
    spacing = (float(np.prod(live)) / n) ** (1.0 / len(live))
    return math.log(0.5 * spacing)


def splats_from_ply(data: PlyData, source: str = "<PLY data>") -> Splats:
    """Interpret a PlyData as splats; plain point clouds get default splat attributes.

    Zero-padded indices (f_rest_07) are read as the standard names; gaps, wrong counts, ambiguous names
    and out-of-range values (see splat_value_problem) raise PlyError naming the property and point.
    """
    names = _standard_names(data, source)
    cols = {canonical: data[name] for canonical, name in names.items()}
    n = data.count
    positions = _group(cols, ["x", "y", "z"], source, n)
    if positions is None:
        raise PlyError(f"{source}: element {data.element_name!r} has no x/y/z properties "
                       f"(found: {', '.join(list(data)[:12]) or 'none'})")
    indices = _rest_indices(names, source)
    f_rest = _columns_to_rows([cols[f"f_rest_{i}"] for i in indices], np.empty((n, len(indices)), np.float32))

    f_dc = _group(cols, ["f_dc_0", "f_dc_1", "f_dc_2"], source, n)
    opacity = cols["opacity"].astype(np.float32) if "opacity" in cols else None
    scale = _group(cols, ["scale_0", "scale_1", "scale_2"], source, n)
    rotation = _group(cols, ["rot_0", "rot_1", "rot_2", "rot_3"], source, n)
    normals = _group(cols, ["nx", "ny", "nz"], source, n)
    check_splat_values({"positions": positions, "f_dc": f_dc, "f_rest": f_rest, "opacity": opacity,
                        "scale": scale, "rotation": rotation}, source)  # what the file gave, before defaults
    if f_dc is None:
        rgb = None
        for group in (["red", "green", "blue"], ["diffuse_red", "diffuse_green", "diffuse_blue"]):
            if all(k in cols for k in group):
                rgb = np.stack([_colour01(np.asarray(cols[k])) for k in group], axis=1)
                break
        if rgb is None:
            rgb = np.full((n, 3), 0.5, np.float32)  # mid grey
        f_dc = (rgb - np.float32(0.5)) / np.float32(SH_C0)
    if opacity is None:
        opacity = np.full(n, math.log(_DEFAULT_OPACITY / (1 - _DEFAULT_OPACITY)), np.float32)
    if scale is None:
        scale = np.full((n, 3), _default_log_scale(positions), np.float32)
    if rotation is None:
        rotation = np.tile(np.asarray(_IDENTITY_WXYZ, np.float32), (n, 1))
    extras = {name: np.ascontiguousarray(data[name]) for canonical, name in names.items()
              if not _STANDARD.match(canonical)}
    return Splats(positions, f_dc, f_rest, opacity, scale, rotation, normals, extras, list(data.comments))


def _splat_rows(splats: Splats) -> tuple[list[str], np.ndarray]:
    """Standard property names and the (N, k) float32 matrix in that order (the record layout)."""
    columns = [splats.positions]
    if splats.normals is not None:
        columns.append(splats.normals)
    columns += [splats.f_dc, splats.f_rest, splats.opacity[:, None], splats.scale, splats.rotation]
    names = splat_property_names(splats.sh_degree, normals=splats.normals is not None)
    return names, _columns_to_rows(columns, np.empty((len(splats), len(names)), np.float32))


def splats_to_ply(splats: Splats) -> PlyData:
    """Standard 3DGS property order (float32), extras appended after rot_3 with their dtypes."""
    out = PlyData(count=len(splats), comments=splats.comments)
    names, rows = _splat_rows(splats)
    for name, column in zip(names, _rows_to_columns(rows, np.float32)):
        out[name] = column
    for name, values in splats.extras.items():
        out[name] = values
    return out


def read_splats(path: str | os.PathLike) -> Splats:
    """Read a 3DGS PLY (or a plain point cloud, filled with default splat attributes)."""
    path = os.fspath(path)
    return splats_from_ply(_read_ply(path, contiguous=False), source=path)


def write_splats(path: str | os.PathLike, splats: Splats, *, format: str = "binary_little_endian") -> None:
    """Write splats as a standard 3DGS PLY, atomically (same bytes as write_ply(splats_to_ply(...)))."""
    path = os.fspath(path)
    if splats.extras or format not in ("binary_little_endian", "binary_big_endian"):
        write_ply(path, splats_to_ply(splats), format=format)
        return
    # All-float32 records: the concatenated row matrix already is the file's data block.
    names, rows = _splat_rows(splats)
    rows = rows.astype(_BYTE_ORDER[format] + "f4", copy=False)
    header = _header_bytes(path, format, "1.0", splats.comments, [], "vertex", len(splats),
                           [(name, "float") for name in names])
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(header)
        f.write(rows.view(np.uint8).data)
