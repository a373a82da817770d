"""The multi-thread forward: same trajectory as one thread, conservation, thread-count setting."""

from __future__ import annotations

import numpy as np
import pytest

from backend.mpm import Boundary, Ground, MPMSolver, ParticleState, Plasticity, Poke, SimConfig
from backend.mpm.replay import Replayer
from backend.mpm.threads import SlabLauncher, thread_count

from mpm.mpm_scenes import lattice

SPACING = 1.0 / 26 / 2  # half a cell at n_grid=32 over a 1 m domain


def block(rng_seed: int = 0):
    """A shuffled, spinning and stretching block (about 2,300 particles) of mixed materials."""
    pos = lattice((0.3, 0.32, 0.3), (0.62, 0.58, 0.5), SPACING)
    pos = pos[np.random.default_rng(rng_seed).permutation(len(pos))]
    c = pos.mean(axis=0)
    vel = np.array([0.3, -0.2, -0.5]) + np.cross([0.5, -1.0, 2.0], pos - c) + 0.4 * (pos - c)
    material = np.where(pos[:, 0] < c[0], 0, 3)  # fixed-corotated and von Mises
    return pos, vel.astype(np.float32), material


def run(threads: int, frames: int = 4, gravity=(0.0, 0.0, -9.81), **extra):
    pos, vel, material = block()
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, gravity=gravity,
                    walls=Boundary("slip"), ground=Ground(0.28, "frictional", 0.3), threads=threads,
                    pokes=[Poke(center=(0.45, 0.45, 0.4), radius=0.08, direction=(1, 0, 0), strength=40.0)],
                    plasticity=Plasticity(yield_stress=300.0), **extra)
    anchor = pos[:, 2] < 0.31
    sim = MPMSolver(ParticleState(pos, E=3e4, nu=0.3, rho=600.0, velocity=vel, material_id=material,
                                  anchor=anchor, volume=SPACING ** 3), cfg)
    outs = [sim.step_frame() for _ in range(frames)]
    return sim, outs


def test_two_and_three_threads_follow_the_single_thread_trajectory():
    ref_sim, ref = run(1)
    assert ref_sim.n_threads == 1 and isinstance(ref_sim.core.launch, Replayer)
    for threads in (2, 3):
        sim, outs = run(threads)
        assert sim.n_threads == threads and isinstance(sim.core.launch, SlabLauncher)
        for a, b in zip(ref, outs):
            # only the order of the float additions on the grid differs
            assert np.abs(a.positions - b.positions).max() < 1e-5
            assert np.abs(a.cov - b.cov).max() < 1e-4 * np.abs(a.cov).max()
        st, st_ref = sim.get_state(), ref_sim.get_state()
        assert np.abs(st["v"] - st_ref["v"]).max() < 1e-3 * np.abs(st_ref["v"]).max()
        # every thread did a share of the work, and the private grids are clear between substeps
        cpu = sim.core.launch.thread_cpu_seconds
        assert min(cpu) > 0.1 * max(cpu)
        assert all(not g.numpy().any() for parts in sim.core.launch._private.values() for g in parts)


def test_a_twin_simulator_runs_beside_the_first_with_the_same_results():
    """DifferentiableSim.twin(): the same particles and settings on buffers of its own, so two threads can each
    run a forward (the estimate's ladder runs its rungs this way); each gives what one run alone gives."""
    import threading

    from backend.mpm import DifferentiableSim

    pos = lattice((0.3, 0.32, 0.3), (0.62, 0.58, 0.5), SPACING)
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, threads=1,
                    pokes=[Poke(center=(0.45, 0.45, 0.4), radius=0.08, direction=(1, 0, 0), strength=40.0)])
    sim = DifferentiableSim(pos, config=cfg, checkpoint_every=8)
    twin = sim.twin()
    assert twin is not sim and twin.core is not sim.core and twin.n == sim.n
    n = len(pos)

    def forward(s, E):
        return s.forward_numpy(np.full(n, np.log(E)), np.full(n, 0.3), np.full(n, 1000.0), np.zeros((n, 3)), 2,
                               taped=False)[:2]

    alone = [forward(sim, E) for E in (1e4, 3e4)]
    side = [None, None]
    threads = [threading.Thread(target=lambda i, s, E: side.__setitem__(i, forward(s, E)), args=(i, s, E))
               for i, (s, E) in enumerate(((sim, 1e4), (twin, 3e4)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (pa, ca), (pb, cb) in zip(alone, side):
        assert np.array_equal(pa, pb) and np.array_equal(ca, cb)


def test_two_threads_conserve_mass_and_momentum_in_free_flight():
    pos, vel, _ = block()
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, 0), fps=25, threads=2)
    rho, vol = 800.0, SPACING ** 3
    sim = MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=rho, velocity=vel, volume=vol), cfg)
    mass = rho * vol
    p0 = mass * sim.get_state()["v"].sum(axis=0)
    for _ in range(3):
        out = sim.step_frame(outputs=False)
    p1 = mass * sim.get_state()["v"].sum(axis=0)
    assert np.abs(p1 - p0).max() <= 1e-4 * np.abs(p0).max()
    assert np.allclose(out.positions.mean(0) - pos.mean(0), vel.mean(0) * 3 / 25, atol=1e-4)


def test_thread_count_setting():
    assert thread_count(1, 10**6, "cpu") == 1
    assert thread_count(3, 10, "cpu") == 3
    assert thread_count(None, 10**6, "cuda:0") == 1
    assert thread_count(None, 100, "cpu") == 1  # too few particles to gain
    assert 1 <= thread_count(None, 10**6, "cpu") <= 8
    assert SimConfig.from_dict({"threads": 2}).threads == 2


def test_job_thread_setting_is_validated(tmp_path):
    from backend import protocol
    from backend.jobs.simulate import sim_config

    (tmp_path / protocol.SCENE_FILE).write_bytes(b"")
    for bad in (0, 1.5, "two"):
        with pytest.raises(protocol.BadJob, match="simulation.threads"):
            protocol.validate_job(protocol.default_job("simulate", simulation={"threads": bad}), tmp_path)
    job = protocol.validate_job(protocol.default_job("simulate", simulation={"threads": 2}), tmp_path)
    assert sim_config(job.simulation).threads == 2
    assert sim_config(protocol.validate_job(protocol.default_job("simulate"), tmp_path).simulation).threads is None


def test_two_thread_gradients_equal_one_thread_gradients():
    import torch

    from backend.mpm import DifferentiableSim

    pos, vel, _ = block()
    n = len(pos)
    rng = np.random.default_rng(1)
    weights = torch.from_numpy(rng.standard_normal((2, n, 3)).astype(np.float32))
    grads = {}
    for threads in (1, 2):
        cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=60, substep_dt=2e-3,
                        threads=threads)
        sim = DifferentiableSim(pos, anchor=pos[:, 2] < 0.31, config=cfg, checkpoint_every=5, volume=SPACING ** 3)
        t = [torch.full((n,), np.log(2e4), requires_grad=True), torch.full((n,), 0.3, requires_grad=True),
             torch.full((n,), 800.0, requires_grad=True), torch.from_numpy(vel).requires_grad_()]
        P, C = sim(*t, 2)
        ((P * weights).sum() + 1e3 * C.sum()).backward()
        grads[threads] = [x.grad.numpy() for x in t]
    for g1, g2 in zip(grads[1], grads[2]):
        assert np.abs(g1 - g2).max() <= 1e-3 * np.abs(g1).max()


def test_a_checkpointed_backward_recomputes_the_next_segment_on_the_free_core_with_the_same_gradients(monkeypatch):
    """With the automatic thread count and one simulation thread, the backward recomputes the next segment
    on the second core while it backpropagates this one; the gradients are the serial backward's, bit for bit.
    An explicit threads=1 keeps the backward on one thread."""
    import torch

    from backend.mpm import DifferentiableSim
    from backend.mpm.autograd import DifferentiableSim as Sim

    pos = lattice((0.3, 0.32, 0.3), (0.5, 0.5, 0.45), SPACING)
    n = len(pos)

    def config(threads):
        return SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, threads=threads,
                         gravity=(0.0, 0.0, -9.81), pokes=[Poke(center=(0.4, 0.4, 0.4), radius=0.08,
                                                                direction=(1, 0, 0), strength=40.0)])

    sim = DifferentiableSim(pos, anchor=pos[:, 2] < 0.32, config=config(None), checkpoint_every=4, grid_store_mb=0.05)
    assert sim.n_threads == 1 and sim._pipelined() and not DifferentiableSim(pos, config=config(1))._pipelined()
    rng = np.random.default_rng(0)
    w = torch.tensor(rng.normal(size=(2, n, 3)), dtype=torch.float32)
    log_E0 = torch.tensor(np.log(3e4) + 0.2 * rng.standard_normal(n), dtype=torch.float32)

    def gradients():
        log_E, v0 = log_E0.clone().requires_grad_(), torch.zeros((n, 3), requires_grad=True)
        x, _ = sim(log_E, torch.full((n,), 0.3), torch.full((n,), 800.0), v0, 2)
        (x * w).sum().backward()
        return log_E.grad, v0.grad

    pipelined = gradients()
    monkeypatch.setattr(Sim, "_pipelined", lambda self: False)
    serial = gradients()
    assert all(torch.equal(a, b) for a, b in zip(pipelined, serial))
    assert pipelined[0].abs().max() > 0
