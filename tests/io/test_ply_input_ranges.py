"""Adversarial splat PLY files: unusual SH property names are read or refused cleanly, and out-of-range
values are named (point and property) where they enter, before anything uses them."""

import numpy as np
import pytest

from backend import protocol
from backend.io import PlyError, read_splats, splat_property_names, write_ply
from backend.io.ply import check_splat_values, splat_value_problem

N = 12


def _columns(names, seed=0):
    rng = np.random.default_rng(seed)
    cols = {}
    for name in names:
        values = rng.normal(size=N).astype(np.float32)
        if name.startswith("scale_"):
            values = values - 4.0  # log scales of a few cm
        cols[name] = values
    return cols


def _standard(degree=1):
    return _columns(splat_property_names(degree, normals=False))


def _padded(name: str, width: int) -> str:
    head, _, index = name.rpartition("_")
    return f"{head}_{int(index):0{width}d}" if name.startswith(("f_rest_", "f_dc_", "scale_", "rot_")) else name


@pytest.mark.parametrize("width, degree", [(2, 1), (2, 3), (3, 2)])
def test_zero_padded_property_names_read_as_the_standard_ones(tmp_path, width, degree):
    cols = _standard(degree)
    padded = {_padded(k, width): v for k, v in cols.items()}
    assert "f_rest_00" in padded or "f_rest_000" in padded
    write_ply(tmp_path / "padded.ply", padded)
    write_ply(tmp_path / "plain.ply", cols)
    got, want = read_splats(tmp_path / "padded.ply"), read_splats(tmp_path / "plain.ply")
    assert got.sh_degree == degree and got.extras == {}
    for field in ("positions", "f_dc", "f_rest", "opacity", "scale", "rotation"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))


def test_mixed_padding_is_read_when_each_index_appears_once(tmp_path):
    cols = _standard(1)
    mixed = {(_padded(k, 2) if k in ("f_rest_3", "f_rest_7") else k): v for k, v in cols.items()}
    write_ply(tmp_path / "mixed.ply", mixed)
    np.testing.assert_array_equal(read_splats(tmp_path / "mixed.ply").f_rest[:, 3], cols["f_rest_3"])


@pytest.mark.parametrize("edit, words", [
    (lambda c: c.update(f_rest_01=c["f_rest_1"]), r"'f_rest_1' and 'f_rest_01' both mean f_rest_1"),
    (lambda c: c.pop("f_rest_5"), r"skip f_rest_5"),
    (lambda c: [c.pop(f"f_rest_{i}") for i in range(6, 9)], r"has 6 f_rest_\* properties; SH degree 1, 2 or 3"),
    (lambda c: c.update(f_rest_9=c["f_rest_0"], f_rest_10=c["f_rest_0"], f_rest_11=c["f_rest_0"]),
     r"has 12 f_rest_\* properties"),
    (lambda c: c.pop("f_rest_0"), r"skip f_rest_0"),
    (lambda c: c.update(scale_02=c["scale_2"]), r"'scale_2' and 'scale_02' both mean scale_2"),
])
def test_ambiguous_gapped_or_miscounted_sh_properties_are_refused(tmp_path, edit, words):
    cols = _standard(1)
    edit(cols)
    path = tmp_path / "odd.ply"
    write_ply(path, cols)
    with pytest.raises(PlyError, match=words) as err:
        read_splats(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("prop, value, words", [
    ("scale_0", 50.0, r"point 3: scale_0 = 50 is out of range \(log scale, metres: \[-30, 10\]\)"),
    ("scale_2", -80.0, r"point 3: scale_2 = -80 is out of range"),
    ("opacity", float("nan"), r"point 3: opacity = nan is NaN"),
    ("opacity", 1e6, r"point 3: opacity = 1e\+06 is out of range \(opacity logit"),
    ("f_dc_1", float("inf"), r"point 3: f_dc_1 = inf is infinite"),
    ("f_rest_4", -1e9, r"point 3: f_rest_4 = -1e\+09 is out of range \(higher SH"),
    ("x", 3e7, r"point 3: x = 3e\+07 is out of range \(world-space centres, metres"),
    ("rot_2", float("nan"), r"point 3: rot_2 = nan is NaN"),
    ("y", float("-inf"), r"point 3: y = -inf is infinite"),
])
def test_out_of_range_values_name_the_first_bad_point_and_property(tmp_path, prop, value, words):
    cols = _standard(1)
    cols[prop][3] = value
    cols[prop][7] = value  # a later bad point: the first is named, the count is given
    path = tmp_path / "bad.ply"
    write_ply(path, cols)
    with pytest.raises(PlyError, match=words) as err:
        read_splats(path)
    assert "2 points" in str(err.value)


def test_a_zero_rotation_is_refused_and_the_earliest_point_wins():
    n = 5
    arrays = {"positions": np.zeros((n, 3)), "scale": np.full((n, 3), -3.0), "rotation": np.tile([1.0, 0, 0, 0], (n, 1)),
              "opacity": np.zeros(n)}
    arrays["rotation"][2] = 0.0
    arrays["opacity"][4] = np.nan
    assert splat_value_problem(arrays, "s") == "s: point 2: the rotation quaternion (rot_0..rot_3) is zero"
    arrays["scale"][1, 1] = 30.0
    assert splat_value_problem(arrays, "s").startswith("s: point 1: scale_1 = 30 is out of range")
    with pytest.raises(PlyError, match="point 1"):
        check_splat_values(arrays, "s")


def test_values_at_the_edges_of_the_contracts_bounds_are_accepted_and_the_job_agrees(tmp_path):
    """The importer applies the bounds of protocol.SCENE_ARRAYS: what it accepts, a job accepts."""
    cols = _standard(1)
    (lo, hi), sh, logit = protocol.LOG_SCALE_LIMITS, protocol.SH_LIMIT, protocol.OPACITY_LOGIT_LIMIT
    cols["scale_0"][0], cols["scale_1"][0] = hi, lo
    cols["opacity"][0], cols["opacity"][1] = logit, -logit
    cols["f_dc_0"][0], cols["f_rest_8"][0] = sh, -sh
    write_ply(tmp_path / "edge.ply", cols)
    s = read_splats(tmp_path / "edge.ply")
    assert s.scale[0, 0] == hi
    scene = {"positions": s.positions, "f_dc": s.f_dc, "f_rest": s.f_rest, "opacity": s.opacity, "scale": s.scale,
             "rotation": s.rotation}
    assert protocol.validate_scene(scene) == N
    cols["scale_0"][0] = np.nextafter(np.float32(hi), np.float32(np.inf))
    write_ply(tmp_path / "over.ply", cols)
    with pytest.raises(PlyError, match="point 0: scale_0"):
        read_splats(tmp_path / "over.ply")
    over = s.scale.copy()
    over[0, 0] = cols["scale_0"][0]
    with pytest.raises(protocol.BadJob, match="point 0"):
        protocol.validate_scene(dict(scene, scale=over))


def test_a_plain_point_cloud_gets_in_range_defaults(tmp_path):
    pts = np.random.default_rng(0).uniform(-1e3, 1e3, (50, 3)).astype(np.float32)
    write_ply(tmp_path / "cloud.ply", {"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})
    splats = read_splats(tmp_path / "cloud.ply")
    assert splat_value_problem({k: getattr(splats, k) for k in ("scale", "opacity", "f_dc", "rotation")}) is None
