"""Replayed launches (backend/mpm/replay.py) give exactly wp.launch's results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import warp as wp

from backend.mpm import DifferentiableSim, SimConfig
from backend.mpm.core import init_warp
from backend.mpm.replay import Replayer

from mpm.test_threads import run


@wp.kernel
def axpy(x: wp.array(dtype=float), a: float, k: int, y: wp.array(dtype=float)):
    i = wp.tid()
    y[i] = a * x[i] + float(k)


def test_a_replayed_launch_repacks_what_changed():
    init_warp("cpu")
    launch = Replayer("cpu")
    x, y = wp.array(np.arange(4, dtype=np.float32)), wp.zeros(4, dtype=float)
    launch(axpy, 4, inputs=[x, 2.0, 1], outputs=[y])
    assert y.numpy().tolist() == [1, 3, 5, 7]
    launch(axpy, 4, inputs=[x, 3.0, 1], outputs=[y])  # a scalar changed
    assert y.numpy().tolist() == [1, 4, 7, 10]
    x2, y2 = wp.array(np.ones(2, dtype=np.float32)), wp.zeros(2, dtype=float)
    launch(axpy, 2, inputs=[x2, 3.0, 5], outputs=[y2])  # other arrays, another size, an int
    assert y2.numpy().tolist() == [8, 8] and y.numpy().tolist() == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        Replayer("cuda:0")


@wp.kernel
def scaled_square(x: wp.array(dtype=float), a: float, y: wp.array(dtype=float)):
    i = wp.tid()
    y[i] = a * x[i] * x[i]


def test_a_replayed_adjoint_launch_gives_warp_s_generated_adjoint():
    """Replayer.adjoint: what wp.launch(..., adjoint=True) gives, as its arguments, adjoints and size change."""
    init_warp("cpu")
    launch = Replayer("cpu")

    def both(n, a, seed):
        rng = np.random.default_rng(seed)
        x0 = rng.random(n).astype(np.float32)
        x = [wp.array(x0) for _ in range(2)]
        y = [wp.zeros(n, dtype=float) for _ in range(2)]
        gx = [wp.zeros(n, dtype=float) for _ in range(2)]
        gy = rng.random(n).astype(np.float32)
        launch.adjoint(scaled_square, n, [x[0], a, y[0]], [gx[0], 0.0, wp.array(gy)])
        wp.launch(scaled_square, n, inputs=[x[1], a, y[1]], adj_inputs=[gx[1], 0.0, wp.array(gy)], adjoint=True)
        assert np.array_equal(gx[0].numpy(), gx[1].numpy()) and gx[0].numpy().any()
        assert np.allclose(gx[0].numpy(), 2 * a * x[0].numpy() * gy)

    both(5, 2.0, 0)
    both(5, 3.0, 1)  # new arrays and a new scalar
    both(9, 3.0, 2)  # another size


@pytest.mark.parametrize("threads", [1, 2])
def test_forward_solver_is_bit_identical_with_and_without_replay(threads, monkeypatch):
    import backend.mpm.core as core

    _, replayed = run(threads, frames=3)
    # the same run with every forward launch through plain wp.launch
    monkeypatch.setattr(core.SimCore, "use_threads",
                        lambda self, setting, replay=True, _f=core.SimCore.use_threads: _f(self, setting, False))
    sim, plain = run(threads, frames=3)
    assert sim.core.launch is wp.launch or not isinstance(sim.core.launch, Replayer)
    for a, b in zip(replayed, plain):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cov, b.cov)


def test_gradients_are_bit_identical_with_and_without_replay():
    rng = np.random.default_rng(1)
    pos = (rng.random((300, 3)) * 0.2 + 0.4).astype(np.float32)
    cfg = SimConfig(n_grid=16, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, gravity=(0, 0, -9.8),
                    substep_dt=1 / 600, threads=1)
    results = []
    for replay in (True, False):
        sim = DifferentiableSim(pos, config=cfg, checkpoint_every=4)
        sim.core.use_threads(1, replay=replay)
        log_E = torch.full((300,), float(np.log(2e4)), requires_grad=True)
        v0 = torch.zeros(300, 3)
        v0[:, 0] = 0.3
        positions, covs = sim(log_E, torch.tensor(0.3), torch.tensor(500.0), v0, 3)
        (positions[-1, :, 0].sum() + covs.sum()).backward()
        results.append((positions.detach().numpy(), log_E.grad.numpy()))
    assert np.array_equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


def test_a_reused_full_tape_gives_a_fresh_tapes_results():
    """The second call reuses the first call's tape buffers (DifferentiableSim._tape_buffers)."""
    rng = np.random.default_rng(2)
    pos = (rng.random((300, 3)) * 0.2 + 0.4).astype(np.float32)
    cfg = SimConfig(n_grid=16, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, gravity=(0, 0, -9.8),
                    substep_dt=1 / 600, threads=1)

    def run(sim, E):
        log_E = torch.full((300,), float(np.log(E)), requires_grad=True)
        positions, covs = sim(log_E, torch.tensor(0.3), torch.tensor(500.0), torch.zeros(3), 2)
        (positions[..., 2].sum() + covs.sum()).backward()
        return positions.detach().numpy(), log_E.grad.numpy()

    reused = DifferentiableSim(pos, config=cfg, checkpoint_every=None)
    first = run(reused, 1e4)
    spare = reused._spare
    assert spare is not None
    second = run(reused, 3e4)
    assert reused._spare.blocks[0] is spare.blocks[0]  # the second call ran on the first call's buffers
    fresh = run(DifferentiableSim(pos, config=cfg, checkpoint_every=None), 3e4)
    assert np.array_equal(second[0], fresh[0]) and np.array_equal(second[1], fresh[1])
    assert not np.array_equal(first[1], second[1])
