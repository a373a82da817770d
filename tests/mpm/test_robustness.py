"""Nothing crashes: extreme stiffness, particles flung out, a single particle; divergence is reported."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import Ground, MPMSolver, ParticleState, SimConfig, SimulationDiverged
from mpm.mpm_scenes import lattice


def block(E, velocity=(0, 0, 0), cap=200, **kw):
    pos = lattice((0.4, 0.4, 0.3), (0.6, 0.6, 0.5), 1 / 52)
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=24, ground=Ground(0.1),
                    max_substeps_per_frame=cap, **kw)
    return MPMSolver(ParticleState(pos, E=E, nu=0.3, rho=1000, velocity=velocity), cfg)


@pytest.mark.parametrize("E", [1.0, 1e3, 1e6, 1e9, 1e12])
def test_any_stiffness_runs_or_reports_divergence(E):
    sim = block(E)
    try:
        for _ in range(2):
            out = sim.step_frame(outputs=False)
        assert np.isfinite(out.positions).all()
        assert (out.positions >= sim.grid.origin).all()
    except SimulationDiverged as err:
        assert err.frame in (0, 1) and 0 <= err.substep < sim.n_substeps_per_frame
        text = str(err)
        assert f"frame {err.frame}" in text and "substep" in text
        assert "smaller substep" in text and "Young's modulus" in text and "finer grid" in text
        assert "capped" in text  # it says the CFL bound was not met


def test_stiff_material_within_the_cap_is_stable():
    sim = block(1e8, cap=5000)
    assert not sim._plan.capped
    for _ in range(1):
        out = sim.step_frame(outputs=False)
    assert np.isfinite(out.positions).all()


def test_particles_flung_out_at_high_speed_stay_on_the_grid():
    sim = block(1e4, velocity=(400.0, -300.0, 500.0), cap=100)
    for _ in range(3):
        out = sim.step_frame(outputs=False)
    g = sim.grid
    lo, hi = g.origin + g.dx, g.origin + (g.n - 2) * g.dx
    assert ((out.positions >= lo - 1e-6) & (out.positions <= hi + 1e-6)).all()


def test_single_particle():
    cfg = SimConfig(n_grid=16, gravity=(0, 0, -9.81), fps=24)
    sim = MPMSolver(ParticleState(np.array([[0.0, 0.0, 1.0]]), E=1e5), cfg)
    out = sim.step_frame()
    assert out.positions.shape == (1, 3) and np.isfinite(out.positions).all()
    assert out.rotations.shape == (1, 4) and out.scales.shape == (1, 3)
    assert out.positions[0, 2] < 1.0


def test_nan_state_raises_simulation_diverged_with_frame_and_substep():
    sim = block(1e4)
    state = sim.get_state()
    state["F"][0] = np.full((3, 3), 1e30)  # a blow-up in the making
    sim.set_state(state)
    with pytest.raises(SimulationDiverged) as info:
        for _ in range(3):
            sim.step_frame(outputs=False)
    assert info.value.frame == 0 and info.value.substep == 0


def test_checkpoint_resume_is_bit_identical():
    a = block(1e4)
    a.step_frame(outputs=False)
    saved = a.get_state()
    first = a.step_frame(outputs=False).positions
    b = block(1e4)
    b.set_state(saved)
    assert b.frame == 1
    assert np.array_equal(b.step_frame(outputs=False).positions, first)
    with pytest.raises(ValueError, match="x"):
        b.set_state({"x": np.zeros((2, 3))})
