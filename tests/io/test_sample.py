"""The bundled potted-plant sample: deterministic, readable, regions and proportions as described."""

import importlib.util
import json
import math
import os

import numpy as np
import pytest

from backend.io import read_ply, read_splats, splat_property_names

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(REPO, "samples")
PLY = os.path.join(SAMPLES, "potted_plant.ply")
REGIONS = os.path.join(SAMPLES, "potted_plant_regions.json")


def _generator():
    spec = importlib.util.spec_from_file_location("make_potted_plant",
                                                  os.path.join(SAMPLES, "make_potted_plant.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def splats():
    return read_splats(PLY)


@pytest.fixture(scope="module")
def regions():
    with open(REGIONS, encoding="utf-8") as f:
        return json.load(f)


def _index(regions, name):
    return np.concatenate([np.arange(a, b) for a, b in regions["regions"][name]["ranges"]])


def _assert_close_tree(a, b, path="json"):
    assert type(a) is type(b) or isinstance(a, (int, float)) and isinstance(b, (int, float)), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_close_tree(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=2e-4), path
    else:
        assert a == b, path


def test_generator_is_deterministic_and_matches_the_bundled_files(tmp_path):
    gen = _generator()
    first, second = tmp_path / "a", tmp_path / "b"
    gen.write(os.fspath(first))
    gen.write(os.fspath(second))
    for name in ("potted_plant.ply", "potted_plant_regions.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    # Against the committed copy: identical on this platform; a different libm may change the
    # last bit of a sin/cos, so compare values closely rather than demanding the same bytes.
    fresh, bundled = read_ply(first / "potted_plant.ply"), read_ply(PLY)
    assert list(fresh) == list(bundled) and fresh.count == bundled.count
    assert fresh.comments == bundled.comments
    for name in bundled:
        np.testing.assert_allclose(fresh[name], bundled[name], rtol=1e-5, atol=1e-6, err_msg=name)
    with open(first / "potted_plant_regions.json", encoding="utf-8") as f:
        _assert_close_tree(json.load(f), json.load(open(REGIONS, encoding="utf-8")))


def test_bundled_file_is_a_small_3dgs_ply(splats, regions):
    data = read_ply(PLY)
    assert list(data) == splat_property_names(1, normals=True)
    assert os.path.getsize(PLY) < 2_000_000
    assert len(splats) == regions["splat_count"] and 6000 <= len(splats) <= 15000
    assert splats.sh_degree == 1 == regions["sh_degree"]
    for arr in (splats.positions, splats.f_dc, splats.f_rest, splats.opacity, splats.scale,
                splats.rotation, splats.normals):
        assert np.isfinite(arr).all()


def test_regions_cover_every_splat_once(splats, regions):
    names = list(regions["regions"])
    assert names == ["pot", "soil", "stem", "leaves", "flower"]
    hits = np.zeros(len(splats), int)
    for name in names:
        idx = _index(regions, name)
        assert len(idx) == regions["regions"][name]["count"] > 0
        hits[idx] += 1
    assert (hits == 1).all()


def test_region_bounding_boxes_and_proportions(splats, regions):
    boxes = {}
    for name, info in regions["regions"].items():
        pts = splats.positions[_index(regions, name)]
        lo, hi = pts.min(0), pts.max(0)
        np.testing.assert_allclose(lo, info["bbox_min"], atol=1e-4)
        np.testing.assert_allclose(hi, info["bbox_max"], atol=1e-4)
        boxes[name] = (lo, hi)
    dims = regions["dimensions"]
    pot_lo, pot_hi = boxes["pot"]
    assert -1e-6 <= pot_lo[2] < 0.005  # stands on z = 0
    assert pot_hi[2] == pytest.approx(dims["pot_height"], abs=0.002) and 0.10 <= dims["pot_height"] <= 0.14
    assert pot_hi[0] - pot_lo[0] == pytest.approx(dims["pot_rim_diameter"], abs=0.003)
    assert 0.10 <= dims["pot_rim_diameter"] <= 0.15
    assert (splats.positions[:, 2] >= -1e-6).all()
    soil_lo, soil_hi = boxes["soil"]
    assert pot_lo[2] < soil_lo[2] and soil_hi[2] < pot_hi[2]  # soil sits inside the pot
    stem_lo, stem_hi = boxes["stem"]
    assert stem_lo[2] == pytest.approx(dims["soil_level"], abs=0.003)
    assert stem_hi[2] - stem_lo[2] == pytest.approx(dims["stem_length"], abs=0.01)
    assert max(stem_hi[:2] - stem_lo[:2]) < 0.04  # thin and nearly upright
    leaf_lo, leaf_hi = boxes["leaves"]
    assert leaf_lo[2] > pot_hi[2] and leaf_hi[2] < stem_hi[2]
    assert all(0.06 <= length <= 0.12 for length in dims["leaf_lengths"])
    assert 0.15 <= max(leaf_hi[:2] - leaf_lo[:2]) <= 0.25  # leaves spread ~0.1 m from the stem
    flower_lo, flower_hi = boxes["flower"]
    assert flower_hi[2] == pytest.approx(dims["plant_height"], abs=1e-4) == splats.positions[:, 2].max()
    assert flower_lo[2] > leaf_hi[2]


def test_true_materials(regions):
    mats = {name: info["material"] for name, info in regions["regions"].items()}
    assert mats["pot"]["anchored"] and mats["soil"]["anchored"]
    assert not any(mats[n]["anchored"] for n in ("stem", "leaves", "flower"))
    assert mats["stem"]["youngs_modulus"] > mats["leaves"]["youngs_modulus"] > mats["flower"]["youngs_modulus"]
    for name in ("stem", "leaves", "flower"):
        assert 0.3 <= mats[name]["poisson_ratio"] <= 0.35
        assert 400 <= mats[name]["density"] <= 800
        assert 1e3 <= mats[name]["youngs_modulus"] <= 1e8


def _rotation_matrices(q):
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)


def test_splats_lie_flat_in_their_surfaces(splats):
    rot = _rotation_matrices(splats.rotation.astype(np.float64))
    normal_axis = rot[:, :, 2]  # the local axis that scale_2 (the thin one) acts along
    assert (np.abs(np.sum(normal_axis * splats.normals, axis=1)) > 0.99).all()
    np.testing.assert_allclose(np.linalg.norm(splats.rotation, axis=1), 1.0, atol=1e-5)
    assert (splats.scale[:, 2] < splats.scale[:, :2].min(axis=1) - 0.5).all()  # much thinner
    sigma = np.exp(splats.scale[:, :2])
    assert 0.0003 < sigma.min() and sigma.max() < 0.005  # millimetre-sized discs
    alpha = 1 / (1 + np.exp(-splats.opacity))
    assert np.median(alpha) > 0.9 and alpha.min() > 0.5


def test_suggested_camera_frames_the_plant_and_poke_hits_the_stem(splats, regions):
    cam = regions["camera"]
    loc, target = np.array(cam["location"]), np.array(cam["target"])
    forward = (target - loc) / np.linalg.norm(target - loc)
    right = np.cross(forward, cam["up"])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    rel = splats.positions - loc
    depth = rel @ forward
    assert (depth > cam["clip_start"]).all() and (depth < cam["clip_end"]).all()
    width, height = cam["resolution"]
    focal = cam["lens_mm"] / cam["sensor_width_mm"] * max(width, height)  # AUTO fit, in pixels
    u, v = focal * (rel @ right) / depth, focal * (rel @ up) / depth
    assert (np.abs(u) < width / 2).all() and (np.abs(v) < height / 2).all()
    assert np.ptp(v) > 0.6 * height  # the plant fills most of the frame height

    poke = regions["poke"]
    stem = splats.positions[_index(regions, "stem")]
    assert np.linalg.norm(stem - poke["centre"], axis=1).min() < 0.01
    assert np.linalg.norm(poke["direction"]) == pytest.approx(1.0, abs=1e-3)
    assert abs(np.dot(poke["direction"], forward)) < 0.2  # sideways in the image
    assert poke["speed_m_s"] > 0 and poke["end_s"] > poke["start_s"] >= 0
    assert math.isclose(poke["half_size"][0], poke["half_size"][1])
