"""Anchors that clamp: a cantilever under gravity against Timoshenko beam theory, with no creep and
no dependence of its static sag on damping."""

from __future__ import annotations

import math

import numpy as np
import pytest

from backend.mpm import MPMSolver, ParticleState, SimConfig
from mpm.mpm_scenes import cantilever

E, RHO, G_ACC = 5e6, 1000.0, 9.81
FRAMES_PER_PERIOD = 8


@pytest.fixture(scope="module")
def bar():
    """6 cells thick (z), 20 cells free length, nu = 0 (no anticlastic coupling)."""
    pos, anchor, geo = cantilever(dx=0.01, length_cells=20, thickness_cells=6, width_cells=2, grip_cells=3)
    L, h = geo["L"], geo["h"]
    # Timoshenko cantilever under its own weight q = rho g A: tip deflection
    #   delta = q L^4 / (8 E I) + q L^2 / (2 kappa G A),  I = b h^3 / 12, G = E / (2 (1 + nu)),
    # with the rectangular-section shear coefficient kappa = 10 (1 + nu) / (12 + 11 nu) (= 5/6 at nu = 0).
    kappa, G = 10.0 / 12.0, E / 2.0
    delta = RHO * G_ACC * L ** 4 / (8 * E * h ** 2 / 12) + RHO * G_ACC * L ** 2 / (2 * kappa * G)
    # First mode: Euler-Bernoulli 1.875^2 sqrt(E I / (rho A)) / L^2, combined with the shear beam's
    # (pi / 2L) sqrt(kappa G / rho) by Dunkerley's rule 1/w^2 = 1/w_b^2 + 1/w_s^2.
    w_b = 1.8751 ** 2 * math.sqrt(E * h ** 2 / (12 * RHO)) / L ** 2
    w_s = math.pi / (2 * L) * math.sqrt(kappa * G / RHO)
    w1 = 1.0 / math.sqrt(1 / w_b ** 2 + 1 / w_s ** 2)
    tip = pos[:, 0] > pos[:, 0].max() - geo["sp"] / 2
    return pos, anchor, geo, delta, w1, tip


def sag_history(bar, damping_per_w1: float, periods: int) -> np.ndarray:
    """Tip deflection (m, downwards) at each frame, FRAMES_PER_PERIOD frames per first-mode period."""
    pos, anchor, geo, delta, w1, tip = bar
    cfg = SimConfig(n_grid=geo["n_grid"], domain_min=(0, 0, 0), domain_max=geo["domain"],
                    fps=FRAMES_PER_PERIOD * w1 / (2 * math.pi), damping=damping_per_w1 * w1)
    sim = MPMSolver(ParticleState(pos, E=E, nu=0.0, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3), cfg)
    z0 = pos[tip, 2].mean()
    return np.array([z0 - sim.step_frame(outputs=False).positions[tip, 2].mean()
                     for _ in range(periods * FRAMES_PER_PERIOD)])


def test_clamped_bar_matches_timoshenko_without_creep_or_damping_dependence(bar):
    *_, delta, w1, _ = bar
    light = sag_history(bar, 0.5, 15)  # damping 0.5 w1 (damping ratio 0.25), 15 periods
    heavy = sag_history(bar, 4.0, 5)   # damping 4 w1 (overdamped, ratio 2), 5 periods
    early, late = light[5 * FRAMES_PER_PERIOD - 1], light[-1]
    assert early == pytest.approx(delta, rel=0.05)     # statics: Timoshenko within 5%
    assert late == pytest.approx(early, rel=0.01)      # no creep from 5 to 15 periods
    assert heavy[-1] == pytest.approx(early, rel=0.02)  # damping 0.5 w1 .. 4 w1 changes it < 2%
    # The first bending mode (the release from rest rings about the sag): period from the zero
    # crossings of the light run's first 3 periods, corrected for its damping ratio 0.25.
    u = light[:3 * FRAMES_PER_PERIOD] - late
    t = np.arange(1, len(u) + 1) * 2 * math.pi / w1 / FRAMES_PER_PERIOD
    i = np.nonzero(u[:-1] * u[1:] < 0)[0]
    cross = t[i] - u[i] * (t[i + 1] - t[i]) / (u[i + 1] - u[i])
    w_measured = math.pi / np.diff(cross).mean() / math.sqrt(1 - 0.25 ** 2)
    assert w_measured == pytest.approx(w1, rel=0.05)
