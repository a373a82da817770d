"""Domain-local coordinates: the same scene anywhere in the world gives the same trajectory."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import BoxCollider, Ground, MPMSolver, ParticleState, Poke, SimConfig
from mpm.mpm_scenes import lattice

OFFSETS = [(0.0, 0.0, 0.0), (10.0, -10.0, 10.0), (1000.0, 1000.0, -1000.0)]
SIZE = 0.2  # the block's edge (m); trajectories must agree within 1e-4 of it


def scene(offset, contacts=True):
    """A soft block on the ground, poked sideways and pushed by a moving sticky box, shifted by offset
    (contacts=False: no ground and no box, just gravity and the poke)."""
    off = np.asarray(offset, np.float64)
    pos = lattice((0.0, 0.0, 0.05), (SIZE, SIZE / 2, 0.05 + SIZE), 0.0125).astype(np.float64) + off
    cfg = SimConfig(n_grid=24, fps=48, gravity=(0, 0, -9.81),
                    pokes=[Poke(center=tuple(off + (SIZE / 2, SIZE / 4, 0.2)), radius=0.06, direction=(1, 0, 0),
                                strength=40.0, start=0.0, end=0.03)],
                    colliders=[BoxCollider(times=(0.0, 0.2), centers=(tuple(off + (-0.05, 0.05, 0.1)),
                                                                      tuple(off + (-0.01, 0.05, 0.1))),
                                           half_extents=(0.03, 0.1, 0.03))])
    if contacts:
        cfg.ground = Ground(height=0.04 + off[2])
    else:
        cfg.colliders = []
    return pos, cfg


def test_forward_trajectory_does_not_depend_on_the_world_offset():
    runs = []
    for off in OFFSETS:
        pos, cfg = scene(off)
        sim = MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=500), cfg)
        runs.append(np.stack([sim.step_frame(outputs=False).positions - np.asarray(off) for _ in range(6)]))
    moved = np.abs(runs[0] - runs[0][:1]).max()
    assert moved > 0.01 * SIZE  # the scene does move
    for r in runs[1:]:
        assert np.abs(r - runs[0]).max() < 1e-4 * SIZE


def test_differentiable_rollout_does_not_depend_on_the_world_offset():
    torch = pytest.importorskip("torch")
    from backend.mpm import DifferentiableSim

    outs = []
    for off in OFFSETS:
        pos, cfg = scene(off, contacts=False)
        cfg.substep_dt = 1.0 / (48 * 40)
        sim = DifferentiableSim(pos, config=cfg, local_outputs=True)
        n = len(pos)
        log_E = torch.full((n,), float(np.log(2e4)), requires_grad=True)
        x, _ = sim(log_E, torch.full((n,), 0.3), torch.full((n,), 500.0), torch.zeros(n, 3), 3)
        (x * torch.linspace(-1, 1, n)[:, None]).sum().backward()
        outs.append((x.detach().numpy().astype(np.float64) + sim.grid.origin - np.asarray(off), log_E.grad.numpy()))
    assert np.abs(outs[0][0][-1] - pos + np.asarray(OFFSETS[-1])).max() > 0.01 * SIZE  # it moves
    g0 = outs[0][1]
    assert np.isfinite(g0).all() and np.abs(g0).max() > 0  # (tail-of-stencil nodes once made these NaN)
    for x, g in outs[1:]:
        assert np.abs(x - outs[0][0]).max() < 1e-4 * SIZE
        assert np.abs(g - g0).max() <= 1e-3 * np.abs(g0).max()
