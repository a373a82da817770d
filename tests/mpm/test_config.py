"""Settings parsing/validation, particle inputs, grid mapping and splat covariances (no kernels)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from backend.mpm import (Boundary, BoxCollider, Ground, MaterialModel, ParticleState, Plasticity, Poke, SimConfig,
                         Wind, covariance_from_splats)
from backend.mpm.grid import GridMapping, lame, p_wave_speed, plan_substeps


def full_config() -> SimConfig:
    return SimConfig(
        n_grid=48, domain_min=(-1, -1, 0), domain_max=(1, 1, 2), fps=30, substep_dt=None, cfl=0.4,
        gravity=(0, 0, -9.81), walls=Boundary("frictional", 0.4), ground=Ground(0.1, "slip", 0.2),
        pokes=[Poke((0, 0, 1), 0.2, (1, 0, 0), 50.0, 0.0, 0.1)],
        winds=[Wind((0, 1, 0), 2.0, 1.5, 0.5, 0.0, None)],
        colliders=[BoxCollider((0.0, 1.0), ((0, 0, 0.5), (0, 0, 1.0)), (0.1, 0.1, 0.1), "sticky", 0.3)],
        plasticity=Plasticity(yield_stress=5e3, friction_angle_deg=35.0), damping=0.5)


def test_round_trip_through_json():
    cfg = full_config()
    d = json.loads(json.dumps(cfg.to_dict()))
    again = SimConfig.from_dict(d)
    assert again.to_dict() == cfg.to_dict()
    assert again.colliders[0].centers[1] == (0.0, 0.0, 1.0)
    assert again.ground.kind == "slip" and again.walls.friction == 0.4


_POKE = {"center": [0, 0, 0], "radius": 0.1, "direction": [1, 0, 0], "strength": 1.0}
_BOX = {"half_extents": [0.1, 0.1, 0.1]}


@pytest.mark.parametrize("patch, needle", [
    ({"n_grid": 4}, "simulation.n_grid = 4"),
    ({"n_grid": 1024}, "simulation.n_grid = 1024"),
    ({"fps": 0}, "simulation.fps"),
    ({"walls": {"kind": "bouncy"}}, "simulation.walls.kind"),
    ({"ground": {"height": "low"}}, "simulation.ground.height"),
    ({"pokes": [dict(_POKE, radius=-1)]}, "simulation.pokes[0].radius"),
    ({"pokes": [dict(_POKE, start=1.0, end=0.5)]}, "simulation.pokes[0].end"),
    ({"pokes": [dict(_POKE, start=0.5, end=0.5)]}, "simulation.pokes[0].end"),
    ({"pokes": [dict(_POKE, direction=[0, 0, 0])]}, "simulation.pokes[0].direction"),
    ({"pokes": [{"radius": 0.1}]}, "simulation.pokes[0].center is required"),
    ({"winds": [{"direction": [1, 0, 0], "strength": 1, "gust_amplitude": 2}]}, "simulation.winds[0].gust_amplitude"),
    ({"colliders": [dict(_BOX, times=[0, 1], centers=[[0, 0, 0]])]}, "simulation.colliders[0].centers"),
    ({"colliders": [dict(_BOX, times=[1, 0], centers=[[0, 0, 0], [1, 1, 1]])]}, "simulation.colliders[0].times"),
    ({"colliders": [{"times": [0], "centers": [[0, 0, 0]], "half_extents": [0.1, 0, 0.1]}]},
     "simulation.colliders[0].half_extents[1]"),
    ({"domain_min": [0, 0, 0]}, "simulation.domain_min"),
    ({"domain_min": [0, 0, 0], "domain_max": [1, -1, 1]}, "simulation.domain_max"),
    ({"substep_dt": 1.0}, "simulation.substep_dt"),
    ({"plasticity": {"friction_angle_deg": 95}}, "simulation.plasticity.friction_angle_deg"),
    ({"gravity": [0, 0]}, "simulation.gravity"),
    ({"colour": 1}, "unknown setting(s) colour"),
])
def test_bad_values_name_the_key(tmp_path, patch, needle):
    """The job schema (protocol) is the one place simulation settings are checked; the key is named."""
    from backend import protocol

    (tmp_path / protocol.SCENE_FILE).write_bytes(b"")
    with pytest.raises(protocol.BadJob, match=re.escape(needle)):
        protocol.validate_job(protocol.default_job("simulate", simulation=patch), tmp_path)


def test_material_names_and_ids():
    assert MaterialModel.parse("drucker_prager") is MaterialModel.DRUCKER_PRAGER
    assert MaterialModel.parse(7) is MaterialModel.SNOW
    assert [m.name.lower() for m in MaterialModel] == [
        "fixed_corotated", "neo_hookean", "stvk_hencky", "von_mises", "drucker_prager", "foam", "plasticine", "snow"]
    with pytest.raises(ValueError, match="unknown material"):
        MaterialModel.parse("jelly")


def test_particle_state_validates_and_broadcasts():
    pos = np.zeros((4, 3))
    ps = ParticleState(pos, E=1e5, nu=0.3, rho=500, material_id=["snow", "foam", 0, 3],
                       velocity=(1, 0, 0))
    assert ps.E.shape == (4,) and ps.velocity.shape == (4, 3) and ps.anchor.dtype == bool
    assert ps.material_id.tolist() == [7, 5, 0, 3]
    for bad, needle in [({"E": -1}, "E"), ({"nu": 0.5}, "nu"), ({"rho": 0}, "rho"), ({"material_id": 9}, "material_id"),
                        ({"velocity": np.zeros((3, 3))}, "velocity"), ({"volume": 0}, "volume")]:
        with pytest.raises(ValueError, match=needle):
            ParticleState(pos, **bad)
    with pytest.raises(ValueError, match="positions"):
        ParticleState(np.full((2, 3), np.nan))


def test_grid_mapping_padding_and_default_volume():
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(2, 1, 1), padding=3)
    spacing = 2 / 26 / 2
    axes = [np.arange(0.5 + spacing / 2, 0.9, spacing)] * 3
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    g = GridMapping.build(cfg, pos)
    assert g.dx == pytest.approx(2 / 26)
    assert np.allclose(g.origin, -3 * g.dx)
    assert g.default_volume(pos) == pytest.approx(spacing ** 3, rel=1e-6)
    with pytest.raises(ValueError, match="outside the simulation domain"):
        GridMapping.build(cfg, np.array([[3.0, 0.5, 0.5]]))


def test_cfl_plan_is_an_integer_split_of_the_frame():
    cfg = SimConfig(fps=24, cfl=0.3, max_substeps_per_frame=1000)
    c = float(p_wave_speed(1e5, 0.3, 1000))
    mu, lam = lame(1e5, 0.3)
    assert c == pytest.approx(np.sqrt((lam + 2 * mu) / 1000))
    plan = plan_substeps(cfg, dx=0.01, c_max=c, v_max=0.0)
    assert plan.n * plan.dt == pytest.approx(1 / 24)
    assert plan.dt <= 0.3 * 0.01 / c and not plan.capped
    capped = plan_substeps(cfg, dx=0.01, c_max=1e4, v_max=0.0)
    assert capped.n == 1000 and capped.capped and capped.n_required > 1000
    fixed = plan_substeps(SimConfig(fps=24, substep_dt=1e-3), dx=0.01, c_max=c, v_max=0)
    assert fixed.n == 42 and fixed.dt == pytest.approx(1 / 24 / 42)


def test_covariance_from_splats():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 4))
    ls = rng.standard_normal((5, 3)) * 0.3 - 3
    cov = covariance_from_splats(ls, q)
    assert np.allclose(cov, np.transpose(cov, (0, 2, 1)), atol=1e-9)
    eig = np.sort(np.linalg.eigvalsh(cov.astype(np.float64)), axis=1)
    assert np.allclose(eig, np.sort(np.exp(2 * ls), axis=1), rtol=1e-4)
    # identity rotation: diagonal covariance
    cov1 = covariance_from_splats(np.log([[1.0, 2.0, 3.0]]), np.array([[1.0, 0, 0, 0]]))
    assert np.allclose(cov1[0], np.diag([1.0, 4.0, 9.0]))
