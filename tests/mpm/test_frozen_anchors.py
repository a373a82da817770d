"""Anchored particles left out of the substeps (core.frozen_anchors): the motion, the outputs, the saved states
and the gradients are those of the full simulation, bit for bit on one thread."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import BoxCollider, DifferentiableSim, MPMSolver, ParticleState, Poke, SimConfig

from mpm.mpm_scenes import lattice

SPACING = 1.0 / 26 / 2  # half a cell at n_grid=32 over a 1 m domain


def scene():
    """A free elastic post standing on a thick anchored slab (most of whose particles only anchored nodes
    surround), poked sideways under gravity."""
    slab = lattice((0.2, 0.2, 0.1), (0.8, 0.8, 0.3), SPACING)
    post = lattice((0.42, 0.42, 0.3 + SPACING), (0.58, 0.58, 0.6), SPACING)
    pos = np.concatenate([slab, post])
    pos = pos[np.random.default_rng(0).permutation(len(pos))]
    return pos, pos[:, 2] < 0.3 + SPACING / 2


def config(**extra):
    return SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, threads=1,
                     pokes=[Poke(center=(0.5, 0.5, 0.55), radius=0.08, direction=(1, 0, 0), strength=40.0)], **extra)


def solver(freeze: bool, **extra) -> MPMSolver:
    pos, anchor = scene()
    return MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=500.0, anchor=anchor, volume=SPACING ** 3),
                     config(**extra), freeze_anchors=freeze)


def test_the_slab_s_inner_particles_are_frozen_and_the_motion_is_the_full_simulation_s_bit_for_bit():
    full, lean = solver(False), solver(True)
    pos, anchor = scene()
    assert full.n_simulated == len(pos)
    frozen = np.setdiff1d(np.arange(len(pos)), lean.simulated)
    assert 0.5 * anchor.sum() < len(frozen) < anchor.sum() and anchor[frozen].all()
    # the anchored layer the post stands on is simulated: its nodes hold the post's mass too
    under_post = anchor & (pos[:, 2] > 0.3 - SPACING) & (np.abs(pos[:, :2] - 0.5) < 0.08).all(axis=1)
    assert under_post.any() and not np.isin(np.flatnonzero(under_post), frozen).any()
    # the bake also freezes the anchors next to free points whose nodes the anchors hold (fixed_nodes); the
    # differentiable rollout, whose densities are inputs, only those whose nodes no free point reaches
    rollout = DifferentiableSim(pos, anchor=anchor, config=config(), volume=SPACING ** 3)
    assert lean.n_simulated < rollout.n < 0.2 * len(pos)
    for _ in range(3):
        a, b = full.step_frame(), lean.step_frame()
        for name in ("positions", "rotations", "scales", "cov", "polar_R", "A"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    moved = np.abs(a.positions - pos).max(axis=1)
    assert moved[~anchor].max() > 0.01 and moved[anchor].max() == 0.0  # the poke moved the post, not the slab
    sa, sb = full.get_state(), lean.get_state()
    for key in ("x", "v", "C", "F", "plastic", "x_err", "F_err"):
        assert np.array_equal(sa[key], sb[key]), key


def test_a_state_saved_by_the_full_simulation_resumes_in_the_lean_one():
    """A bake checkpoint holds every particle and their order (set_state keeps the simulated ones')."""
    full, lean = solver(False), solver(True)
    full.step_frame()
    lean.set_state(full.get_state())
    a, b = full.step_frame(), lean.step_frame()
    assert np.array_equal(a.positions, b.positions)
    again = solver(True)
    again.set_state(lean.get_state())
    assert np.array_equal(again.step_frame().positions, lean.step_frame().positions)


def test_nothing_is_frozen_with_a_collider():
    """A moving collider can give a fixed node a velocity, which the frozen particles would miss."""
    lean = solver(True, colliders=[BoxCollider(centers=((0.9, 0.9, 0.9),), half_extents=(0.05, 0.05, 0.05))])
    assert lean.n_simulated == lean.n


@pytest.mark.parametrize("taped, scene_rho", [("checkpointed", None), ("full tape", None), ("checkpointed", 450.0)])
def test_the_differentiable_rollout_gives_the_full_rollout_s_outputs_and_gradients(taped, scene_rho):
    """Per-call fixed nodes (scene_rho None) or the scene's (the estimate's: more anchors frozen)."""
    import torch

    pos, anchor = scene()
    n = len(pos)
    cov0 = np.tile(np.diag([2e-5, 1e-5, 3e-5]).astype(np.float32), (n, 1, 1))
    sims = [DifferentiableSim(pos, anchor=anchor, cov0=cov0, config=config(), volume=SPACING ** 3,
                              checkpoint_every=None if taped == "full tape" else 8, freeze_anchors=f, rho=scene_rho)
            for f in (False, True)]
    assert sims[1].n < 0.2 * n < sims[0].n == n
    if scene_rho is not None:  # every anchor the fixed nodes hold whole, as a bake freezes them
        assert sims[1].n == solver(True).n_simulated
    rng = np.random.default_rng(1)
    w_pos = torch.tensor(rng.normal(size=(2, n, 3)), dtype=torch.float32)
    w_cov = torch.tensor(rng.normal(size=(2, n, 3, 3)), dtype=torch.float32)
    log_E0 = np.log(2e4) + 0.1 * rng.standard_normal(n)
    # (softer anchors: the frozen ones no longer count towards the CFL substep, which the stiffest sets)
    log_E0[anchor] = log_E0[~anchor].min()
    results = []
    for sim in sims:
        log_E = torch.tensor(log_E0, dtype=torch.float32, requires_grad=True)
        nu = torch.full((n,), 0.3, requires_grad=True)
        rho = torch.full((n,), 500.0, requires_grad=True)
        v0 = torch.zeros((n, 3), requires_grad=True)
        x, cov = sim(log_E, nu, rho, v0, 2)
        ((x * w_pos).sum() + 1e3 * (cov * w_cov).sum()).backward()
        results.append((x.detach(), cov.detach(), log_E.grad, nu.grad, rho.grad, v0.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert results[0][2][anchor].abs().max() > 0  # the simulated anchored layer feels the post
