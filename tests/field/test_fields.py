"""Material fields: bounds, init round trips, lock mask, gradients, checkpoints, errors."""
import math

import numpy as np
import pytest
import torch

from backend.field import FIELD_KINDS, FieldConfigError, make_field

N = 300


@pytest.fixture(scope="module")
def scene():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(N, 3, generator=g) * torch.tensor([2.0, 1.0, 0.5]) + torch.tensor([-1.0, 3.0, 0.0])
    u = (pos - pos.min(0).values) / (pos.max(0).values - pos.min(0).values)
    log_e = math.log(1e4) + math.log(100.0) * u[:, 0]  # 1e4 .. 1e6 Pa, smooth along x
    nu = 0.2 + 0.15 * u[:, 1]
    return pos, torch.exp(log_e), nu


@pytest.mark.parametrize("kind", sorted(FIELD_KINDS))
def test_outputs_bounded_even_at_extreme_raw_values(kind, scene):
    pos, _, _ = scene
    field = make_field(kind, pos, E_range=(1e3, 1e8), nu_range=(0.05, 0.45))
    with torch.no_grad():
        for p in field.parameters():
            p.copy_(torch.randn_like(p) * 50.0)
    out = field()
    assert set(out) == {"log_E", "E", "nu", "rho"}
    assert all(v.shape == (N,) for v in out.values())
    assert (out["E"] >= 1e3 * (1 - 1e-5)).all() and (out["E"] <= 1e8 * (1 + 1e-5)).all()
    assert (out["nu"] >= 0.05 - 1e-6).all() and (out["nu"] <= 0.45 + 1e-6).all()
    assert torch.allclose(out["log_E"], torch.log(out["E"]), atol=1e-4)
    assert torch.equal(out["rho"], torch.full((N,), 1000.0))  # density fixed by default


def test_density_learned_only_when_ranged(scene):
    pos, E, nu = scene
    field = make_field("per_particle", pos, rho_range=(100.0, 3000.0), init=dict(E=E, nu=nu, rho=500.0))
    out = field()
    assert torch.allclose(out["rho"], torch.full((N,), 500.0), rtol=1e-5)
    assert out["rho"].requires_grad


def test_per_particle_init_round_trip_exact(scene):
    pos, E, nu = scene
    out = make_field("per_particle", pos, init=dict(E=E, nu=nu))()
    assert torch.allclose(out["E"], E, rtol=2e-5)
    assert torch.allclose(out["nu"], nu, atol=1e-6)


def test_global_init_uses_median(scene):
    pos, E, nu = scene
    out = make_field("global", pos, init=dict(E=E, nu=nu))()
    assert torch.allclose(out["E"], torch.full((N,), float(E.double().median())), rtol=2e-5)
    assert out["E"].unique().numel() == 1


@pytest.mark.parametrize("kind", ["kan_triplane", "mlp_triplane"])
def test_triplane_fits_given_values(kind, scene):
    pos, E, nu = scene
    field = make_field(kind, pos, init=dict(E=E, nu=nu), fit_steps=60, fit_lr=3e-2)
    with torch.no_grad():
        out = field()
    decades = (out["log_E"] - torch.log(E)).abs() / math.log(10)
    assert float(decades.mean()) < 0.1, float(decades.mean())
    assert float((out["nu"] - nu).abs().mean()) < 0.02


def test_triplane_bias_is_the_median_without_fit(scene):
    pos, E, _ = scene
    field = make_field("mlp_triplane", pos, init=dict(E=E), fit_steps=0)
    out = field()  # zero-initialised last layer: the field is exactly its bias
    assert torch.allclose(out["E"], torch.full((N,), float(E.double().median())), rtol=1e-4)


@pytest.mark.parametrize("kind", sorted(FIELD_KINDS))
def test_lock_mask_keeps_given_values(kind, scene):
    pos, E, nu = scene
    lock = torch.zeros(N, dtype=torch.bool)
    lock[::7] = True
    field = make_field(kind, pos, init=dict(E=E, nu=nu), lock=lock, fit_steps=5)
    opt = torch.optim.Adam(field.parameters(), lr=0.5)
    for _ in range(2):
        out = field()
        opt.zero_grad()
        (out["log_E"].sum() + out["nu"].sum()).backward()
        opt.step()
    out = field()
    assert torch.equal(out["E"][lock], E[lock])
    assert torch.equal(out["nu"][lock], nu[lock])
    assert torch.allclose(out["log_E"][lock], torch.log(E[lock]))
    assert not torch.allclose(out["E"][~lock], E[~lock], rtol=1e-3)  # the unlocked ones moved


def test_gradients_reach_planes_and_splines(scene):
    pos, _, _ = scene
    field = make_field("kan_triplane", pos)
    out = field()
    (out["log_E"].square().mean() + out["nu"].mean() + field.regularizer()).backward()
    assert field.triplane.planes.grad.abs().sum() > 0
    for layer in field.layers:
        assert layer.spline_coef.grad.abs().sum() > 0
        assert layer.base_weight.grad.abs().sum() > 0


def test_mlp_triplane_gradients_reach_planes_after_first_step(scene):
    pos, _, _ = scene
    field = make_field("mlp_triplane", pos)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        field()["log_E"].square().mean().backward()
        opt.step()
    assert field.triplane.planes.grad.abs().sum() > 0


def test_regularizers(scene):
    pos, _, _ = scene
    field = make_field("kan_triplane", pos, tv_weight=1.0, spline_l1_weight=0.5)
    with torch.no_grad():
        field.triplane.planes.fill_(0.3)
    assert float(field.triplane.tv().detach()) == 0.0
    reg = field.regularizer()
    assert torch.isclose(reg, 0.5 * field.spline_l1())
    with torch.no_grad():
        field.triplane.planes[0, 0, 2, 3] = 1.0
    assert float(field.triplane.tv().detach()) > 0
    assert float(make_field("per_particle", pos).regularizer()) == 0.0


def test_state_dict_round_trip(scene):
    pos, E, nu = scene
    lock = torch.zeros(N, dtype=torch.bool)
    lock[:10] = True
    a = make_field("kan_triplane", pos, init=dict(E=E, nu=nu), lock=lock, fit_steps=3)
    b = make_field("kan_triplane", pos)
    b.load_state_dict(a.state_dict())
    out_a, out_b = a(), b()
    assert torch.allclose(out_a["E"], out_b["E"]) and torch.allclose(out_a["nu"], out_b["nu"])
    mats = b.materials()
    assert set(mats) == {"youngs_modulus", "poisson_ratio", "density"}
    assert mats["youngs_modulus"].dtype == np.float32 and mats["youngs_modulus"].shape == (N,)


def test_bad_settings_raise_clear_errors(scene):
    pos, E, _ = scene
    with pytest.raises(FieldConfigError, match="unknown material field"):
        make_field("octree", pos)
    with pytest.raises(FieldConfigError, match="one value per particle"):
        make_field("per_particle", pos, init=dict(E=E[:10]))
    with pytest.raises(FieldConfigError, match="need their values"):
        make_field("global", pos, lock=torch.ones(N, dtype=torch.bool))
    with pytest.raises(FieldConfigError, match="positive"):
        make_field("global", pos, init=dict(E=-E))
    with pytest.raises(FieldConfigError, match=r"\(N,3\)"):
        make_field("global", pos[:, :2])
    with pytest.raises(FieldConfigError, match="bad option"):
        make_field("global", pos, resolution=8)
    with pytest.raises(FieldConfigError, match="low < high"):
        make_field("global", pos, nu_range=(0.4, 0.1))


def test_negative_poisson_range_is_usable(scene):
    """The job schema allows any nu_range inside (-1, 0.5) (stable isotropic solids); the field takes it."""
    pos, _, _ = scene
    nu = make_field("per_particle", pos, nu_range=(-0.2, 0.4), init=dict(nu=-0.1))()["nu"]
    assert torch.allclose(nu, torch.full_like(nu, -0.1), atol=1e-5)
