"""Elastic benchmarks against analytic answers: axial vibration frequency and the Poisson effect."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import BoxCollider, MPMSolver, ParticleState, SimConfig
from mpm.mpm_scenes import lattice

N_GRID = 32
DOMAIN = (0.8, 0.3, 0.3)
DX = max(DOMAIN) / (N_GRID - 6)


@pytest.mark.parametrize("E", [1e4, 1e5])
def test_axial_vibration_first_mode(E):
    """Bar fixed at one end, nu = 0: f1 = sqrt(E / rho) / (4 L)."""
    rho, L, x0, grip = 1000.0, 0.6, 0.05, 0.1
    sp, width = DX / 2, 3 * DX
    pos = lattice((x0, 0.1, 0.1), (x0 + grip + L, 0.1 + width, 0.1 + width), sp)
    xa = x0 + grip
    c = np.sqrt(E / rho)
    f_expected = c / (4 * L)
    # initial velocity in the shape of the first mode, so the tip moves as sin(2 pi f t)
    vel = np.zeros_like(pos)
    vel[:, 0] = 0.005 * c * np.sin(np.pi * np.clip(pos[:, 0] - xa, 0, None) / (2 * L))
    frames_per_period = 40
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=DOMAIN, gravity=(0, 0, 0),
                    fps=frames_per_period * f_expected)
    sim = MPMSolver(ParticleState(pos, E=E, nu=0.0, rho=rho, anchor=pos[:, 0] < xa, velocity=vel, volume=sp ** 3),
                    cfg)
    tip = pos[:, 0] > xa + L - 2 * sp
    u = [0.0]
    for _ in range(int(1.3 * frames_per_period)):
        u.append(sim.step_frame(outputs=False).positions[tip, 0].mean() - pos[tip, 0].mean())
    u = np.asarray(u)
    t = np.arange(len(u)) / cfg.fps
    i = np.nonzero(u[1:-1] * u[2:] < 0)[0] + 1          # sign changes after t = 0
    crossings = t[i] - u[i] * (t[i + 1] - t[i]) / (u[i + 1] - u[i])
    assert len(crossings) >= 2
    f_measured = 0.5 / (crossings[1] - crossings[0])
    assert f_measured == pytest.approx(f_expected, rel=0.10)
    assert np.abs(u).max() > 0  # it did vibrate


@pytest.mark.parametrize("nu", [0.2, 0.4])
def test_poisson_contraction_of_a_stretched_bar(nu):
    """Pull one end of an anchored bar slowly by 5%: lateral strain ~ -nu * axial strain."""
    x0, x1 = 0.05, 0.65
    sp, width = DX / 2, 4 * DX
    y0 = 0.15 - width / 2
    pos = lattice((x0, y0, y0), (x1, y0 + width, y0 + width), sp)
    grip = 0.06
    pull = 0.05 * (x1 - x0)
    c0 = (x1 - grip / 2 + 0.02, 0.15, 0.15)
    jaw = BoxCollider(times=(0.0, 1.0), centers=(c0, (c0[0] + pull, 0.15, 0.15)),
                      half_extents=(grip / 2 + 0.02, width, width), kind="sticky")
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=DOMAIN, gravity=(0, 0, 0), fps=20,
                    colliders=[jaw], damping=2.0)
    sim = MPMSolver(ParticleState(pos, E=1e4, nu=nu, rho=1000, anchor=pos[:, 0] < x0 + grip, volume=sp ** 3), cfg)
    for _ in range(28):  # 1 s of pulling, 0.4 s of holding
        out = sim.step_frame(outputs=False)
    p = out.positions
    a = np.abs(pos[:, 0] - 0.25) < sp
    b = np.abs(pos[:, 0] - 0.45) < sp
    axial = (p[b, 0].mean() - p[a, 0].mean()) / (pos[b, 0].mean() - pos[a, 0].mean()) - 1
    mid = np.abs(pos[:, 0] - 0.35) < 0.1
    lateral = 0.5 * (p[mid, 1].std() / pos[mid, 1].std() + p[mid, 2].std() / pos[mid, 2].std()) - 1
    assert 0.03 < axial < 0.08
    assert -lateral / axial == pytest.approx(nu, rel=0.20)
