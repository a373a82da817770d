"""Free flight and free fall: mass, momentum, kinematics; splat outputs of the deformed state."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp

from backend.mpm import MPMSolver, ParticleState, SimConfig
from backend.mpm.kernels_forward import p2g
from backend.mpm.splat_frames import quat_to_matrix

SPACING = 1.0 / 26 / 2  # half a cell for n_grid=32 over a 1 m domain




def spinning_block():
    lo, hi = np.array([0.35, 0.35, 0.35]), np.array([0.6, 0.55, 0.5])
    axes = [np.arange(a + SPACING / 2, b, SPACING) for a, b in zip(lo, hi)]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    c = pos.mean(axis=0)
    omega = np.array([0.5, -1.0, 2.0])
    vel = np.array([0.3, -0.2, 0.1]) + np.cross(omega, pos - c) + 0.4 * (pos - c)  # spin + stretch
    return pos, vel


def momentum(state, mass):
    return (mass[:, None] * state["v"]).sum(axis=0)


def test_free_flight_conserves_mass_and_momentum():
    pos, vel = spinning_block()
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=25)
    rho, vol = 800.0, SPACING ** 3
    sim = MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=rho, velocity=vel, volume=vol), cfg)
    mass = np.full(len(pos), rho * vol)
    p0 = momentum(sim.get_state(), mass)
    for _ in range(4):
        out = sim.step_frame(outputs=False)
    st = sim.get_state()
    p1 = momentum(st, mass)
    assert np.abs(p1 - p0).max() <= 1e-4 * np.abs(p0).max()
    # the centre of mass moves with the initial mean velocity
    assert np.allclose(out.positions.mean(0) - pos.mean(0), vel.mean(0) * 4 / 25, atol=1e-4)
    # P2G puts every particle's mass on the grid: the B-spline weights sum to one
    grid_mv = wp.zeros(sim.core.n_nodes, dtype=wp.vec4)
    s = sim.state
    wp.launch(p2g, sim.n, inputs=[s.x, s.v, s.C, s.F, s.plastic, sim.core.material, sim.mu, sim.lam, sim.mass,
                                  sim.vol, sim.core.g_full, sim.core.pp, sim.core.pokes, 0.0, sim.substep_dt, 0],
              outputs=[grid_mv, None])
    grid = grid_mv.numpy().astype(np.float64)
    assert grid[:, 3].sum() == pytest.approx(mass.sum(), rel=1e-6)
    assert np.allclose(grid[:, :3].sum(0), p1, rtol=1e-4, atol=1e-7)


def test_free_fall_matches_ballistic_motion():
    axes = [np.arange(0.45 + SPACING / 2, 0.55, SPACING)] * 2 + [np.arange(0.8 + SPACING / 2, 0.9, SPACING)]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, -9.81), fps=10)
    sim = MPMSolver(ParticleState(pos, E=1e4, nu=0.3, rho=1000, volume=SPACING ** 3), cfg)
    for _ in range(3):
        out = sim.step_frame(outputs=False)
    t = 0.3
    drop = pos[:, 2].mean() - out.positions[:, 2].mean()
    assert drop == pytest.approx(0.5 * 9.81 * t ** 2, rel=0.01)
    assert sim.get_state()["v"][:, 2].mean() == pytest.approx(-9.81 * t, rel=0.01)
    assert out.time == pytest.approx(t)


def test_splat_outputs_are_consistent_with_F():
    pos, vel = spinning_block()
    rng = np.random.default_rng(1)
    q = rng.standard_normal((len(pos), 4))
    r = quat_to_matrix(q)
    s0 = np.exp(rng.uniform(-6, -4, (len(pos), 3)))
    cov0 = (r * s0[:, None, :] ** 2) @ np.transpose(r, (0, 2, 1))
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=25)
    sim = MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=800, velocity=vel * 3, volume=SPACING ** 3, cov0=cov0), cfg)
    for _ in range(2):
        out = sim.step_frame()
    F = sim.get_state()["F"].astype(np.float64)
    assert np.abs(F - np.eye(3)).max() > 0.05  # really deformed
    cov = F @ cov0 @ np.transpose(F, (0, 2, 1))
    scale = np.abs(cov).max(axis=(1, 2), keepdims=True)
    assert np.allclose(out.cov / scale, cov / scale, atol=1e-4)
    assert np.allclose(out.A @ np.transpose(out.A, (0, 2, 1)) / scale, cov / scale, atol=1e-4)
    u = quat_to_matrix(out.rotations.astype(np.float64))
    assert np.allclose(np.linalg.det(u), 1.0, atol=1e-5)
    ellipsoid = (u * out.scales[:, None, :].astype(np.float64) ** 2) @ np.transpose(u, (0, 2, 1))
    assert np.allclose(ellipsoid / scale, cov / scale, atol=5e-3)  # float32 SVD, near-equal axes
    assert (out.scales > 0).all() and out.rotations.shape == (len(pos), 4)
    R = out.polar_R.astype(np.float64)
    assert np.allclose(R @ np.transpose(R, (0, 2, 1)), np.eye(3), atol=1e-4)
    assert np.allclose(np.linalg.det(R), 1.0, atol=1e-4)
    S = np.transpose(R, (0, 2, 1)) @ F  # polar: F = R S with S symmetric positive definite
    assert np.allclose(S, np.transpose(S, (0, 2, 1)), atol=1e-3)
    assert (np.linalg.eigvalsh(0.5 * (S + np.transpose(S, (0, 2, 1)))) > 0).all()
