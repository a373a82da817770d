"""Boundary responses (Coulomb friction, slip, sticky), moving colliders and the time-windowed forces."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import Boundary, BoxCollider, Ground, MPMSolver, ParticleState, Poke, SimConfig, Wind
from mpm.mpm_scenes import lattice

N_GRID = 32
G = 9.81


def sliding_block(kind, mu, v0, E, domain=(0.5, 0.3, 0.3), fps=50):
    dx = max(domain) / (N_GRID - 6)
    sp, gh = dx / 2, 0.03
    pos = lattice((0.05, 0.1, gh), (0.15, 0.2, gh + 0.1), sp)
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=domain, gravity=(0, 0, -G), fps=fps,
                    ground=Ground(height=gh, kind=kind, friction=mu))
    return pos, MPMSolver(ParticleState(pos, E=E, nu=0.3, rho=1000, velocity=(v0, 0, 0), volume=sp ** 3), cfg)


@pytest.mark.parametrize("mu", [0.3, 0.5])
def test_block_on_frictional_floor_stops_at_coulomb_distance(mu):
    v0 = 1.0
    pos, sim = sliding_block("frictional", mu, v0, E=1e6)
    stop_time = v0 / (mu * G)
    for _ in range(int(np.ceil((stop_time + 0.1) * 50))):
        out = sim.step_frame(outputs=False)
    distance = out.positions[:, 0].mean() - pos[:, 0].mean()
    assert distance == pytest.approx(v0 ** 2 / (2 * mu * G), rel=0.15)
    assert abs(sim.get_state()["v"][:, 0].mean()) < 0.05


def test_slip_floor_keeps_tangential_velocity():
    pos, sim = sliding_block("slip", 0.5, 1.0, E=1e5)
    for _ in range(12):
        sim.step_frame(outputs=False)
    v = sim.get_state()["v"]
    assert v[:, 0].mean() == pytest.approx(1.0, rel=0.01)
    assert abs(v[:, 1].mean()) < 1e-3


def test_sticky_floor_holds_the_contact_layer():
    pos, sim = sliding_block("sticky", 0.0, 1.0, E=1e5)
    for _ in range(10):
        out = sim.step_frame(outputs=False)
    bottom = pos[:, 2] < pos[:, 2].min() + 1e-4
    assert out.positions[bottom, 0].mean() - pos[bottom, 0].mean() < 0.2 * 1.0 * 0.2  # far less than free sliding


def test_walls_stop_particles_and_keep_them_in_the_grid():
    """A block thrown at 30 m/s into a slip wall stays inside the domain (no out-of-grid access)."""
    pos = lattice((0.4, 0.4, 0.4), (0.5, 0.5, 0.5), 1 / 52)
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=24,
                    walls=Boundary("slip"), max_substeps_per_frame=400)
    sim = MPMSolver(ParticleState(pos, E=1e4, nu=0.3, rho=1000, velocity=(30.0, 5.0, 0.0)), cfg)
    for _ in range(3):
        out = sim.step_frame(outputs=False)
    dx = sim.grid.dx
    assert out.positions[:, 0].max() <= 1.0 + dx
    assert np.isfinite(out.positions).all()
    assert out.positions[:, 0].mean() > 0.8  # went to the wall


def test_poke_pushes_only_inside_its_sphere_and_window():
    pos = lattice((0.2, 0.45, 0.45), (0.8, 0.55, 0.55), 1 / 52)
    poke = Poke(center=(0.75, 0.5, 0.5), radius=0.06, direction=(0, 0, 2), strength=20.0, start=0.04, end=0.08)
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=100,
                    pokes=[poke])
    sim = MPMSolver(ParticleState(pos, E=1e3, nu=0.3, rho=1000), cfg)
    for f in range(12):
        sim.step_frame(outputs=False)
        v = sim.get_state()["v"]
        if f == 3:  # t = 0.04: not started yet
            assert np.abs(v).max() < 1e-6
    # momentum gained = strength * window * mass inside the sphere (soft material: little redistribution loss)
    inside = np.linalg.norm(pos - np.array(poke.center), axis=1) < poke.radius
    gained = v[:, 2].sum()
    assert gained == pytest.approx(20.0 * 0.04 * inside.sum(), rel=0.1)
    left = pos[:, 0] < 0.4
    assert np.abs(v[left, 2]).mean() < 0.2 * np.abs(v[inside, 2]).mean()


def test_wind_gusts_accelerate_everything():
    pos = lattice((0.45, 0.45, 0.45), (0.55, 0.55, 0.55), 1 / 52)
    wind = Wind(direction=(1, 0, 0), strength=2.0, gust_frequency=2.0, gust_amplitude=0.5, start=0.0, end=0.25)
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=20,
                    winds=[wind])
    sim = MPMSolver(ParticleState(pos, E=1e4, nu=0.3, rho=1000), cfg)
    for _ in range(6):
        sim.step_frame(outputs=False)
    # integral of 2 (1 + 0.5 sin(4 pi t)) over 0..0.25 s = 0.5 + 1/(4 pi) * (1 - cos(pi)) * 0.5
    expected = 2.0 * (0.25 + 0.5 * (1 - np.cos(np.pi)) / (4 * np.pi))
    assert sim.get_state()["v"][:, 0].mean() == pytest.approx(expected, rel=0.02)


def test_moving_sticky_collider_carries_material_and_anchors_stay_put():
    pos = lattice((0.2, 0.4, 0.4), (0.8, 0.6, 0.6), 1 / 52)
    anchor = pos[:, 0] < 0.3
    box = BoxCollider(times=(0.0, 0.5), centers=((0.75, 0.5, 0.5), (0.75, 0.5, 0.7)), half_extents=(0.06, 0.15, 0.15),
                      kind="sticky")
    cfg = SimConfig(n_grid=N_GRID, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=20,
                    colliders=[box])
    sim = MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=1000, anchor=anchor), cfg)
    for _ in range(10):
        out = sim.step_frame(outputs=False)
    gripped = pos[:, 0] > 0.72
    lift = out.positions[gripped, 2].mean() - pos[gripped, 2].mean()
    assert lift == pytest.approx(0.2, rel=0.15)
    assert np.abs(out.positions[anchor] - pos[anchor]).max() == 0.0
