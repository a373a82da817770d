"""Rest state under gravity: the captured shape is the equilibrium, so an unpoked object stays put."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import MPMSolver, ParticleState, Poke, SimConfig
from backend.mpm.rest import CANNOT_STAND_STRAIN, solve_rest_state
from mpm.mpm_scenes import cantilever

E, RHO = 2e6, 1000.0


@pytest.fixture(scope="module")
def bar():
    """A clamped bar (sags about 4% of its size when released from F = I) and its rest state."""
    pos, anchor, geo = cantilever(dx=0.02, length_cells=12, thickness_cells=4, width_cells=2, grip_cells=3)
    cfg = SimConfig(n_grid=geo["n_grid"], domain_min=(0, 0, 0), domain_max=geo["domain"], fps=24)
    ps = ParticleState(pos, E=E, nu=0.3, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3)
    rest = solve_rest_state(ps, cfg, tolerance=1e-3)
    return pos, anchor, geo, cfg, rest


def _run(pos, anchor, geo, cfg, F0, n_frames):
    sim = MPMSolver(ParticleState(pos, E=E, nu=0.3, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3, F0=F0), cfg)
    return np.stack([sim.step_frame(outputs=False).positions for _ in range(n_frames)])


def test_rest_state_converges(bar):
    *_, rest = bar
    assert rest.converged and rest.residual <= 1e-3
    assert 1 <= rest.iterations <= 4 and rest.substeps > 0


def test_unpoked_object_stays_within_one_percent_for_two_seconds(bar):
    pos, anchor, geo, cfg, rest = bar
    size = np.ptp(pos, axis=0).max()
    drift = np.abs(_run(pos, anchor, geo, cfg, rest.F, 48) - pos).max() / size
    assert drift < 0.01
    sagged = np.abs(_run(pos, anchor, geo, cfg, None, 6) - pos).max() / size  # without it, it sags
    assert sagged > 0.02


def test_poked_object_sways_and_returns_to_its_captured_shape(bar):
    pos, anchor, geo, cfg, rest = bar
    tip = pos[:, 0] > pos[:, 0].max() - geo["sp"]
    cfg = SimConfig.from_dict({**cfg.to_dict(), "damping": 3.0})
    cfg.pokes = [Poke(center=tuple(pos[tip].mean(0)), radius=0.05, direction=(0, 0, 1), strength=40.0,
                      start=0.0, end=0.05)]
    cfg.validate()
    u = np.linalg.norm(_run(pos, anchor, geo, cfg, rest.F, 48)[:, tip] - pos[tip], axis=2).mean(1)
    peak = u.max()
    assert peak > 0.01 * np.ptp(pos, axis=0).max()  # a visible sway
    assert u[-6:].max() < 0.3 * peak  # and back towards the captured shape


def _soft_bar(E_bar, **kwargs):
    pos, anchor, geo = cantilever(dx=0.02, length_cells=12, thickness_cells=4, width_cells=2, grip_cells=3)
    cfg = SimConfig(n_grid=geo["n_grid"], domain_min=(0, 0, 0), domain_max=geo["domain"], fps=24)
    ps = ParticleState(pos, E=E_bar, nu=0.3, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3)
    return pos, anchor, geo, cfg, solve_rest_state(ps, cfg, **kwargs)


def test_a_bar_that_sags_fifteen_percent_converges_and_stays_put():
    """At 2e5 Pa the bar sags 15% of its length (its grip and tip turn by about a tenth of a radian): the
    rest state still converges, and the bar stays put."""
    E_bar = 2e5
    pos, anchor, geo, cfg, rest = _soft_bar(E_bar, tolerance=1e-3)
    assert rest.converged and rest.residual <= 1e-3 and rest.iterations <= 4
    assert 0.02 < rest.strain < 0.3  # a real prestrain holds the captured shape
    sim = MPMSolver(ParticleState(pos, E=E_bar, nu=0.3, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3, F0=rest.F),
                    cfg)
    size = np.ptp(pos, axis=0).max()
    drift = max(np.abs(sim.step_frame(outputs=False).positions - pos).max() for _ in range(24)) / size
    assert drift < 0.01


def test_an_object_too_soft_to_stand_says_so():
    """At 5e4 Pa the bar folds down by half its length: holding it straight takes strains of tens of percent,
    more than the material really bears, and the solves do not converge."""
    *_, rest = _soft_bar(5e4, tolerance=1e-2, max_iterations=2)
    assert not rest.converged
    assert rest.strain > CANNOT_STAND_STRAIN  # what the simulate job's warning reads


def test_secant_step_inverts_the_gain_of_the_last_step():
    """A full step that flips the residual (a leaning stem: the gain is 2) asks for half a step; a step that
    left a third of it asks for 1.5 (the cap); one that made it worse the same way halves the step."""
    from backend.mpm.rest import STEP_RANGE, secant_step

    r = np.random.default_rng(0).standard_normal(300)
    assert secant_step(r, -r, 1.0) == pytest.approx(0.5)
    assert secant_step(r, r / 3, 1.0) == pytest.approx(1.5)
    assert secant_step(r, 0.5 * r, 0.5) == pytest.approx(1.0)  # gain 1 measured on a half step
    assert secant_step(r, 1.2 * r, 1.0) == pytest.approx(0.5) and secant_step(r, 1.2 * r, 0.3) == STEP_RANGE[0]
    assert secant_step(np.zeros(3), r[:3], 0.7) == 0.7


def test_unrotated_takes_off_the_turn_of_the_increment_only():
    from backend.mpm.rest import unrotated

    rng = np.random.default_rng(0)
    before = np.eye(3) + 0.1 * rng.standard_normal((5, 3, 3))
    stretch = np.eye(3) + 0.05 * rng.standard_normal((5, 3, 3))
    stretch = 0.5 * (stretch + stretch.transpose(0, 2, 1))  # symmetric positive: a pure stretch
    c, s = np.cos(0.7), np.sin(0.7)
    turn = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    np.testing.assert_allclose(unrotated(turn @ stretch @ before, before), stretch @ before, atol=1e-5)


def test_rollout_rescales_the_rest_strain_with_E_and_its_gradient_matches_finite_differences():
    """DifferentiableSim(F0, F0_E): F0(E) = I + (F0 - I) F0_E / E; dL/dlog E includes that path."""
    torch = pytest.importorskip("torch")
    from backend.mpm import DifferentiableSim
    from mpm.mpm_scenes import lattice

    pos = lattice((0.35, 0.4, 0.4), (0.65, 0.6, 0.6), 1 / 32)
    n = len(pos)
    rng = np.random.default_rng(1)
    strain = 0.02 * rng.standard_normal((n, 3, 3))
    F0 = np.eye(3) + 0.5 * (strain + strain.transpose(0, 2, 1))
    cfg = dict(n_grid=16, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, substep_dt=2e-3, gravity=(0, 0, -9.8))
    weights = torch.from_numpy(rng.standard_normal((2, n, 3)))

    def loss(log_e, backward=False):
        sim = DifferentiableSim(pos, anchor=pos[:, 2] < 0.42, config=SimConfig(**cfg), F0=F0, F0_E=1e4)
        t = torch.tensor(log_e, dtype=torch.float64, requires_grad=True)
        P, _ = sim(t, torch.full((n,), 0.3), torch.full((n,), 1000.0), torch.zeros(n, 3), 2)
        value = (P.double() * weights).sum()
        if backward:
            value.backward()
            return value.item(), t.grad.numpy()
        return value.item(), None

    log_e = np.log(2e4) + 0.1 * rng.standard_normal(n)
    _, grad = loss(log_e, backward=True)
    h, direction = 0.05, 1.0 + 0.5 * rng.standard_normal(n)
    fd = (loss(log_e + h * direction)[0] - loss(log_e - h * direction)[0]) / (2 * h)
    assert float((grad * direction).sum()) == pytest.approx(fd, rel=0.05)
