"""PLY reader/writer: byte-exact round trips, foreign layouts, defaults for point clouds, errors."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest

from backend.io import (
    SH_C0,
    PlyData,
    PlyError,
    Splats,
    read_ply,
    read_splats,
    sh_degree_from_rest_count,
    splat_property_names,
    splats_to_ply,
    write_ply,
    write_splats,
)
from backend.io.atomic import atomic_path
from backend.io.sh import dc_to_rgb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _hand_written_ply(path, names, n, *, seed=0, order="<", comments=("written by numpy",)):
    """A 3DGS-style file built without our writer: header text + one structured array."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype([(name, order + "f4") for name in names])
    table = np.zeros(n, dtype)
    for name in names:
        table[name] = rng.standard_normal(n).astype(np.float32)
    fmt = "binary_little_endian" if order == "<" else "binary_big_endian"
    header = ["ply", f"format {fmt} 1.0"] + [f"comment {c}" for c in comments]
    header += [f"element vertex {n}"] + [f"property float {name}" for name in names] + ["end_header\n"]
    with open(path, "wb") as f:
        f.write("\n".join(header).encode())
        f.write(table.tobytes())
    return table


@pytest.mark.parametrize("normals", [True, False])
def test_3dgs_round_trip_is_byte_exact(tmp_path, normals):
    names = splat_property_names(3, normals=normals)
    assert len(names) == (62 if normals else 59)
    src, dst = tmp_path / "in.ply", tmp_path / "out.ply"
    table = _hand_written_ply(src, names, 257)

    data = read_ply(src)
    assert list(data) == names and data.count == 257 and data.element_name == "vertex"
    assert data.format == "binary_little_endian" and data.comments == ["written by numpy"]
    for name in names:
        assert data[name].dtype == np.float32 and data[name].flags.c_contiguous
        np.testing.assert_array_equal(data[name], table[name])

    write_ply(dst, data)
    assert dst.read_bytes() == src.read_bytes()

    # The splat view reads the same values and writes the same bytes again.
    splats = read_splats(src)
    assert splats.sh_degree == 3 and splats.f_rest.shape == (257, 45)
    np.testing.assert_array_equal(splats.positions, np.stack([table["x"], table["y"], table["z"]], 1))
    np.testing.assert_array_equal(splats.f_rest[:, 17], table["f_rest_17"])
    np.testing.assert_array_equal(splats.rotation[:, 0], table["rot_0"])  # w first, as stored
    np.testing.assert_array_equal(splats.opacity, table["opacity"])
    assert (splats.normals is not None) == normals
    write_splats(dst, splats)
    assert dst.read_bytes() == src.read_bytes()
    write_ply(dst, splats_to_ply(splats))  # the generic path writes the same file
    assert dst.read_bytes() == src.read_bytes()


def test_mixed_types_and_extra_properties_keep_order_and_bytes(tmp_path):
    n = 50
    rng = np.random.default_rng(1)
    data = PlyData({
        "x": rng.random(n, dtype=np.float32), "y": rng.random(n, dtype=np.float32),
        "z": rng.random(n, dtype=np.float32),
        "red": rng.integers(0, 256, n).astype(np.uint8), "label": rng.integers(-5, 5, n).astype(np.int32),
        "weight": rng.random(n), "flag": rng.integers(0, 2, n).astype(np.int8),
    }, comments=["mixed"])
    path, again = tmp_path / "mixed.ply", tmp_path / "again.ply"
    write_ply(path, data)
    back = read_ply(path)
    assert list(back) == list(data)
    for name in data:
        assert back[name].dtype == data[name].dtype
        np.testing.assert_array_equal(back[name], data[name])
    write_ply(again, back)
    assert again.read_bytes() == path.read_bytes()

    splats = read_splats(path)
    assert list(splats.extras) == ["red", "label", "weight", "flag"]
    assert splats.extras["label"].dtype == np.int32
    write_splats(again, splats)  # extras come after the standard properties, dtypes kept
    assert list(read_ply(again))[-4:] == ["red", "label", "weight", "flag"]
    assert read_ply(again)["weight"].dtype == np.float64


def test_type_spelling_is_preserved(tmp_path):
    path, out = tmp_path / "sized.ply", tmp_path / "out.ply"
    table = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
    table["x"] = [1, 2, 3]
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float32 x\n"
              "property float32 y\nproperty float32 z\nproperty uint8 red\nend_header\n")
    path.write_bytes(header.encode() + table.tobytes())
    write_ply(out, read_ply(path))
    assert out.read_bytes() == path.read_bytes()


def test_big_endian_point_cloud(tmp_path):
    n = 40
    rng = np.random.default_rng(2)
    table = np.zeros(n, dtype=[("x", ">f4"), ("y", ">f4"), ("z", ">f4"),
                               ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k in "xyz":
        table[k] = rng.standard_normal(n)
    for k in ("red", "green", "blue"):
        table[k] = rng.integers(0, 256, n)
    path = tmp_path / "be.ply"
    header = ("ply\nformat binary_big_endian 1.0\nelement vertex 40\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n")
    path.write_bytes(header.encode() + table.tobytes())

    data = read_ply(path)
    assert data.format == "binary_big_endian"
    assert data["x"].dtype == np.dtype("=f4")  # native byte order in memory
    np.testing.assert_array_equal(data["x"], table["x"].astype(np.float32))
    splats = read_splats(path)
    np.testing.assert_array_equal(splats.positions[:, 2], table["z"].astype(np.float32))
    rgb = np.stack([table["red"], table["green"], table["blue"]], 1) / 255.0
    np.testing.assert_allclose(splats.f_dc * SH_C0 + 0.5, rgb, atol=1e-6)

    out = tmp_path / "be_again.ply"  # written back in the file's own format, byte-exact
    write_ply(out, data)
    assert out.read_bytes() == path.read_bytes()


def test_ascii_point_cloud_with_faces(tmp_path):
    path = tmp_path / "ascii.ply"
    path.write_text(
        "ply\nformat ascii 1.0\ncomment tiny\nelement vertex 4\nproperty float x\nproperty float y\n"
        "property float z\nproperty float red\nproperty float green\nproperty float blue\n"
        "element face 1\nproperty list uchar int vertex_indices\nend_header\n"
        "0 0 0 1 0 0\n1 0 0 0 1 0\n0 1 0 0 0 1\n0 0 1.5e-1 0.5 0.5 0.5\n4 0 1 2 3\n")
    data = read_ply(path)
    assert data.format == "ascii" and data.count == 4 and data.comments == ["tiny"]
    np.testing.assert_array_equal(data["z"], np.array([0, 0, 0, 0.15], np.float32))
    splats = read_splats(path)
    np.testing.assert_allclose(splats.f_dc[0] * SH_C0 + 0.5, [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(splats.f_dc[3], [0, 0, 0], atol=1e-6)


def test_ascii_write_round_trips_values(tmp_path):
    rng = np.random.default_rng(3)
    data = PlyData({"x": rng.standard_normal(20).astype(np.float32), "y": rng.standard_normal(20),
                    "z": np.arange(20, dtype=np.float32), "id": np.arange(20, dtype=np.int16)})
    path = tmp_path / "a.ply"
    write_ply(path, data, format="ascii")
    back = read_ply(path)
    assert back.format == "ascii"
    for name in data:
        assert back[name].dtype == data[name].dtype
        np.testing.assert_array_equal(back[name], data[name])


def test_plain_xyz_gets_default_splat_attributes(tmp_path):
    n = 1000
    rng = np.random.default_rng(4)
    pts = (rng.random((n, 3)) * [2.0, 1.0, 0.5]).astype(np.float32)
    path = tmp_path / "xyz.ply"
    write_ply(path, {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})
    s = read_splats(path)
    assert len(s) == n and s.sh_degree == 0 and s.normals is None and s.extras == {}
    np.testing.assert_array_equal(s.positions, pts)
    np.testing.assert_allclose(1 / (1 + np.exp(-s.opacity)), 0.9, rtol=1e-6)
    np.testing.assert_array_equal(s.rotation, np.tile([1, 0, 0, 0], (n, 1)))
    np.testing.assert_array_equal(s.f_dc, 0.0)  # mid grey
    extent = pts.max(0) - pts.min(0)
    expected = math.log(0.5 * (float(np.prod(extent)) / n) ** (1 / 3))
    np.testing.assert_allclose(s.scale, expected, rtol=1e-5)
    assert 0.01 < math.exp(expected) < 0.1  # about half the point spacing of a 2x1x0.5 m box


def test_flat_point_cloud_uses_area_spacing(tmp_path):
    # All points on z=0: the volume is zero, so the spacing must come from the area.
    g = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2) * 0.01
    path = tmp_path / "flat.ply"
    write_ply(path, {"x": g[:, 0].astype(np.float32), "y": g[:, 1].astype(np.float32),
                     "z": np.zeros(100, np.float32)})
    s = read_splats(path)
    np.testing.assert_allclose(np.exp(s.scale), 0.5 * math.sqrt(0.09 * 0.09 / 100), rtol=1e-5)


def test_xyz_rgb_colours_become_dc(tmp_path):
    rgb = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128]], np.uint8)
    path = tmp_path / "rgb.ply"
    write_ply(path, {"x": np.arange(4, dtype=np.float32), "y": np.zeros(4, np.float32),
                     "z": np.zeros(4, np.float32), "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]})
    s = read_splats(path)
    np.testing.assert_allclose(s.f_dc * SH_C0 + 0.5, rgb / 255.0, atol=1e-6)
    assert list(s.extras) == ["red", "green", "blue"]  # kept, not dropped
    np.testing.assert_allclose(dc_to_rgb(s.f_dc), rgb / 255.0, atol=1e-6)  # and back, in the DC's own type
    assert dc_to_rgb(s.f_dc).dtype == s.f_dc.dtype


def test_zero_vertices_is_allowed(tmp_path):
    path = tmp_path / "empty.ply"
    write_ply(path, PlyData({name: np.zeros(0, np.float32) for name in splat_property_names(1)}))
    data = read_ply(path)
    assert data.count == 0 and len(data) == 26
    s = read_splats(path)
    assert len(s) == 0 and s.sh_degree == 1


def test_sh_coefficients_layout():
    n, k = 2, 3
    rest = np.arange(n * 3 * k, dtype=np.float32).reshape(n, 3 * k)  # R0 R1 R2 G0 G1 G2 B0 B1 B2
    s = Splats(np.zeros((n, 3)), [[10, 20, 30]] * n, rest, np.zeros(n), np.zeros((n, 3)),
               np.tile([1, 0, 0, 0], (n, 1)))
    sh = s.sh_coefficients()
    assert sh.shape == (n, 4, 3)
    np.testing.assert_array_equal(sh[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(sh[0, 2], [1, 4, 7])  # second rest coefficient of R, G, B
    assert sh_degree_from_rest_count(45) == 3
    with pytest.raises(ValueError):
        sh_degree_from_rest_count(10)


def test_splats_validates_shapes():
    good = dict(positions=np.zeros((3, 3)), f_dc=np.zeros((3, 3)), f_rest=np.zeros((3, 9)),
                opacity=np.zeros(3), scale=np.zeros((3, 3)), rotation=np.zeros((3, 4)))
    assert Splats(**good).sh_degree == 1
    for key, bad in [("scale", np.zeros((3, 2))), ("opacity", np.zeros(4)), ("f_rest", np.zeros((3, 10))),
                     ("rotation", np.zeros((2, 4)))]:
        with pytest.raises(ValueError):
            Splats(**{**good, key: bad})
    with pytest.raises(ValueError, match="clashes"):
        Splats(**good, extras={"rot_0": np.zeros(3)})


# ---- errors ---------------------------------------------------------------------------

def _assert_ply_error(path, fragment, reader=read_ply):
    with pytest.raises(PlyError) as info:
        reader(path)
    assert os.fspath(path) in str(info.value)
    assert fragment in str(info.value)


def test_not_a_ply(tmp_path):
    path = tmp_path / "photo.ply"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    _assert_ply_error(path, "not a PLY")


def test_missing_file(tmp_path):
    _assert_ply_error(tmp_path / "nowhere.ply", "cannot open")


def test_truncated_data(tmp_path):
    path = tmp_path / "cut.ply"
    _hand_written_ply(path, splat_property_names(1), 100)
    path.write_bytes(path.read_bytes()[:-10])
    _assert_ply_error(path, "truncated")


def test_truncated_header(tmp_path):
    path = tmp_path / "head.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n")
    _assert_ply_error(path, "end_header")


def test_truncated_ascii(tmp_path):
    path = tmp_path / "cut_ascii.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                    "property float z\nend_header\n0 0 0\n1 1 1\n")
    _assert_ply_error(path, "truncated")


def test_bad_header_lines(tmp_path):
    path = tmp_path / "weird.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty half x\nend_header\n")
    _assert_ply_error(path, "unsupported property")
    path.write_bytes(b"ply\nformat binary_middle_endian 1.0\nelement vertex 0\nend_header\n")
    _assert_ply_error(path, "format")


def test_list_property_in_vertex_element(tmp_path):
    path = tmp_path / "list.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\n"
                     b"property list uchar int idx\nend_header\n" + bytes(9))
    _assert_ply_error(path, "list propert")


def test_missing_xyz(tmp_path):
    path = tmp_path / "noxyz.ply"
    write_ply(path, {"a": np.zeros(3, np.float32)})
    _assert_ply_error(path, "x/y/z", reader=read_splats)


def test_partial_groups_and_bad_rest_count(tmp_path):
    path = tmp_path / "partial.ply"
    cols = {k: np.zeros(2, np.float32) for k in ("x", "y", "z", "scale_0")}
    write_ply(path, cols)
    _assert_ply_error(path, "scale_1", reader=read_splats)
    cols = {k: np.zeros(2, np.float32) for k in ["x", "y", "z"] + [f"f_rest_{i}" for i in range(5)]}
    write_ply(path, cols)
    _assert_ply_error(path, "f_rest", reader=read_splats)


def test_write_rejects_unstorable_data(tmp_path):
    path = tmp_path / "bad.ply"
    with pytest.raises(PlyError, match="int64"):
        write_ply(path, {"x": np.arange(3)})
    with pytest.raises(PlyError, match="values"):
        write_ply(path, {"x": np.zeros(3, np.float32), "y": np.zeros(4, np.float32)})
    assert not path.exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "keep.ply"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.ply"]


def test_package_import_stays_light():
    code = ("import sys, backend.io; "
            "bad = [m for m in ('backend.io.video', 'imageio', 'PIL', 'torch') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
