"""warp CUDA against warp CPU: the same forward trajectory and the same gradients.

Needs a CUDA device; skipped elsewhere (benchmarks/gpu_check.sh runs it on a GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import warp as wp

from backend.mpm import Boundary, DifferentiableSim, Ground, MPMSolver, ParticleState, Poke, SimConfig
from backend.mpm.core import init_warp
from mpm.mpm_scenes import lattice

init_warp("cpu")
pytestmark = pytest.mark.skipif(not wp.is_cuda_available(), reason="needs a CUDA GPU (warp CUDA against warp CPU)")

SPACING = 1.0 / 26 / 2


def config(**extra):
    return SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, walls=Boundary("slip"),
                     ground=Ground(0.28, "frictional", 0.3),
                     pokes=[Poke(center=(0.45, 0.45, 0.4), radius=0.08, direction=(1, 0, 0), strength=40.0)], **extra)


def test_cuda_forward_matches_cpu():
    pos = lattice((0.3, 0.32, 0.3), (0.62, 0.58, 0.5), SPACING)
    out = {}
    for device in ("cpu", "cuda:0"):
        sim = MPMSolver(ParticleState(pos, E=3e4, nu=0.3, rho=600.0, anchor=pos[:, 2] < 0.31, volume=SPACING ** 3),
                        config(threads=1), device=device)
        out[device] = [sim.step_frame() for _ in range(4)]
    for a, b in zip(out["cpu"], out["cuda:0"]):
        assert np.abs(a.positions - b.positions).max() < 1e-4
        assert np.abs(a.cov - b.cov).max() < 1e-3 * np.abs(a.cov).max()


@pytest.mark.parametrize("checkpoint_every, adjoints", [(None, "hand"), (5, "hand"), (5, "generated")])
def test_cuda_gradients_match_cpu(checkpoint_every, adjoints):
    """CUDA (hand-written or generated adjoints; checkpointed with the P2G grids kept) against CPU's
    hand-written adjoints: the hand-written G2P adjoint scatters into the grid with atomics there."""
    pos = lattice((0.35, 0.35, 0.35), (0.6, 0.55, 0.5), SPACING)
    n = len(pos)
    weights = torch.from_numpy(np.random.default_rng(0).standard_normal((2, n, 3)).astype(np.float32))
    grads = {}
    for device in ("cpu", "cuda:0"):
        sim = DifferentiableSim(pos, config=config(substep_dt=2e-3, threads=1), device=device,
                                checkpoint_every=checkpoint_every, volume=SPACING ** 3, grid_store_mb=64.0,
                                adjoints="hand" if device == "cpu" else adjoints)
        t = [torch.full((n,), np.log(2e4), requires_grad=True), torch.full((n,), 0.3, requires_grad=True),
             torch.full((n,), 800.0, requires_grad=True), torch.zeros((n, 3), requires_grad=True)]
        P, C = sim(*t, 2)
        ((P.cpu() * weights).sum() + 1e3 * C.cpu().sum()).backward()
        grads[device] = [x.grad.numpy() for x in t]
    for g_cpu, g_cuda in zip(grads["cpu"], grads["cuda:0"]):
        assert np.abs(g_cpu - g_cuda).max() <= 1e-2 * np.abs(g_cpu).max()
