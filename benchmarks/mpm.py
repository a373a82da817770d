"""MPM solver benchmarks: forward throughput and gradient cost. Prints one JSON object per line.

    .venv/bin/python benchmarks/mpm.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/mpm.py --quick    # tiny smoke run
    .venv/bin/python benchmarks/mpm.py --baseline DIR   # forward A/B: another source tree (DIR) vs this one
    .venv/bin/python benchmarks/mpm.py --threads-crossover   # 1 vs 2 threads at small sizes
    .venv/bin/python benchmarks/mpm.py --grid-adjoint        # the grid update's reverse: warp's vs hand-written

Forward: a fixed-corotated jelly block falling under gravity inside walls onto a ground plane,
warp CPU (or --device cuda). particle_substeps_per_s uses wall time; *_cpu uses this process's
CPU time, which is steadier on a machine shared with other jobs. Each figure is the best of several
repetitions. The forward cases use the default thread count; "threads_*" runs 1 and 2 threads on
the same block in one run, frames interleaved, and prints each thread's CPU time per substep (a
measure of the split that does not depend on other jobs' load) and how far the two trajectories
end apart. "threads_crossover" (--threads-crossover runs only it) times the differentiable rollout's
forward and backward on 1 and 2 threads at 3k-14k particles: where threads.MIN_PARTICLES_PER_THREAD
should put the second thread.

Frozen anchors (--frozen-anchors runs only it): an object standing on an anchored table slab, as a
capture with its support anchored: the slab's inner particles, which only anchored grid nodes surround,
are left out of the substeps (core.frozen_anchors). A = every particle simulated, B = frozen anchors left
out, in one run, interleaved: the forward bake's frame time and the differentiable rollout's forward and
backward, and whether the two give the same positions and gradients bit for bit.

Recomputation on the free core (--pipeline runs only it): a checkpointed backward of a 2.7k-particle block
(one simulation thread, as the estimate runs the demo's plant), 256 substeps: A recomputes each segment
before backpropagating it, B recomputes the next segment on the second core meanwhile; interleaved, with
the median backward wall and CPU times and whether the gradients agree bit for bit.

Grid-update adjoint (--grid-adjoint runs only it): the reverse of one grid update on a 16^3 node box (about
the demo's plant; 45% of the nodes empty), walls only and with a ground and a moving collider: A = warp's
generated adjoint of kernels.grid_update, B = the hand-written adjoints.grid_update_adjoint, both replayed
as the backward launches them, best of 5 x 1000 launches, interleaved, and whether the two agree.

Rest state: the cost of the rest-state step under gravity (backend/mpm/rest.py) on a clamped bar,
reported apart from the forward throughput: substeps, seconds, residual, and its cost in seconds of
bake time (the same substeps simulated forward).

Gradient (--gradient runs only these): N particles, one frame of 32 substeps, loss on the final
positions, backward to per-particle log E / nu / rho / v0, with and without checkpointing, on 1 thread
and on the default count (*_cpu: process CPU time, all threads together), then one 768-substep
checkpointed frame for the peak memory. Each case runs in its own subprocess so its peak RSS (VmHWM)
is its own. Each prints "before" (warp's generated adjoints; checkpointed backward recomputes whole
substeps) and "after" (the hand-written adjoints; the forward keeps the P2G grids and the particles'
stresses) in the same run, "hand_recompute" (hand-written adjoints, nothing kept) and "grids_only" (the
grids kept, the stresses recomputed) to tell the changes apart; a "gradient_summary" line lists
backward_over_forward_cpu per variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from peak_memory import status_kb

# MPM_BENCH_ROOT: run against another source tree (the --baseline A/B runs its cases in subprocesses).
ROOT = os.environ.get("MPM_BENCH_ROOT") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


SUBSTEPS = 20  # per timed frame


def jelly_block(n_target: int, n_grid: int, order: str = "sorted"):
    """Lattice block of about n_target particles (8 per cell) in a 1 m domain."""
    dx = 1.0 / (n_grid - 6)
    sp = dx / 2
    side = max(2, round(n_target ** (1 / 3)))
    lo = np.array([0.5 - side * sp / 2, 0.5 - side * sp / 2, 0.3])
    axes = [np.arange(lo[a] + sp / 2, lo[a] + side * sp, sp)[:side] for a in range(3)]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)
    if order == "random":
        pos = pos[np.random.default_rng(0).permutation(len(pos))]
    return pos, sp ** 3


def peak_rss_mb() -> float:
    kb = status_kb("VmHWM")
    return float("nan") if kb is None else kb / 1024.0


def rss_mb() -> float:
    kb = status_kb("VmRSS")
    return float("nan") if kb is None else kb / 1024.0


def make_solver(n_target: int, n_grid: int, device: str, order: str = "sorted", sort_every: int | None = 16,
                threads: int | None = None):
    from backend.mpm import Boundary, Ground, MPMSolver, ParticleState, SimConfig

    pos, vol = jelly_block(n_target, n_grid, order)
    cfg = SimConfig(n_grid=n_grid, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=1.0 / (SUBSTEPS * 1e-4),
                    substep_dt=1e-4, walls=Boundary("slip"), ground=Ground(0.05, "frictional", 0.3), threads=threads)
    sim = MPMSolver(ParticleState(pos, E=1e5, nu=0.3, rho=1000.0, volume=vol), cfg, device=device,
                    sort_every=sort_every)
    sim.step_frame(outputs=False)  # warm-up (compile / caches)
    return sim


def time_frame(sim) -> tuple[float, float]:
    import warp as wp

    wp.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    sim.step_frame(outputs=False)
    wp.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def report(label: str, sim, wall: list, cpu: list, **extra) -> None:
    work = sim.n * sim.n_substeps_per_frame
    emit(case=label, device=sim.device, n=sim.n, n_grid=sim.grid.n, threads=sim.n_threads,
         substeps=sim.n_substeps_per_frame,
         particle_substeps_per_s=work / min(wall), particle_substeps_per_s_cpu=work / max(min(cpu), 1e-9),
         ms_per_substep=1e3 * min(wall) / sim.n_substeps_per_frame, **extra)


def forward_case(n_target: int, n_grid: int, device: str, reps: int) -> None:
    sim = make_solver(n_target, n_grid, device)
    times = [time_frame(sim) for _ in range(reps)]
    t0 = time.perf_counter()
    sim.step_frame(outputs=True)
    report("forward", sim, [t[0] for t in times], [t[1] for t in times],
           frame_with_splat_outputs_s=time.perf_counter() - t0)


def ab_case(n_target: int, n_grid: int, device: str, reps: int) -> None:
    """A/B in one run, frames interleaved: particles in random order (as splats arrive) simulated
    as given (A) or kept sorted by grid cell (B)."""
    sims = {"A_unsorted": make_solver(n_target, n_grid, device, "random", None),
            "B_cell_sorted": make_solver(n_target, n_grid, device, "random", 16)}
    times = {k: [] for k in sims}
    for _ in range(reps):
        for k, sim in sims.items():
            times[k].append(time_frame(sim))
    for k, sim in sims.items():
        report("ab_" + k, sim, [t[0] for t in times[k]], [t[1] for t in times[k]])


def threads_case(n_target: int, n_grid: int, device: str, reps: int) -> None:
    """1 thread (A) against 2 threads (B) on one block, frames interleaved."""
    sims = {1: make_solver(n_target, n_grid, device, threads=1), 2: make_solver(n_target, n_grid, device, threads=2)}
    times = {k: [] for k in sims}
    cpu0 = {k: sim.core.launch.thread_cpu_seconds for k, sim in sims.items() if k > 1}
    for _ in range(reps):
        for k, sim in sims.items():
            times[k].append(time_frame(sim))
    x = {k: sim.get_state()["x"] for k, sim in sims.items()}
    best = {k: min(t[0] for t in times[k]) for k in sims}
    for k, sim in sims.items():
        extra = {}
        if k > 1:
            steps = reps * sim.n_substeps_per_frame
            per_thread = [1e3 * (c - c0) / steps for c, c0 in zip(sim.core.launch.thread_cpu_seconds, cpu0[k])]
            one = 1e3 * min(t[1] for t in times[1]) / sims[1].n_substeps_per_frame
            mine = 1e3 * min(t[1] for t in times[k]) / sim.n_substeps_per_frame
            # on free cores a substep takes its serial part (process CPU outside the slab kernels)
            # plus the slowest thread's share
            critical = max(mine - sum(per_thread), 0.0) + max(per_thread)
            extra = {"thread_cpu_ms_per_substep": [round(c, 3) for c in per_thread],
                     "speedup_wall": best[1] / best[k], "speedup_by_cpu_critical_path": one / critical,
                     "max_position_difference_m": float(abs(x[k] - x[1]).max())}
        report(f"threads_{k}", sim, [t[0] for t in times[k]], [t[1] for t in times[k]], **extra)


def threads_crossover_case(device: str, sizes=(3000, 4000, 5000, 6000, 8000, 14000), reps: int = 5) -> None:
    """Where a second thread starts to pay (threads.MIN_PARTICLES_PER_THREAD): the differentiable rollout's
    checkpointed forward and backward, 1 against 2 threads on the same block at each size, interleaved; best
    wall time of reps (after a warm-up) per substep."""
    import torch

    from backend.estimation.budget import GRID_STORE_MB
    from backend.mpm import DifferentiableSim, SimConfig

    substeps = 64
    for n_target in sizes:
        pos, vol = jelly_block(n_target, 64)
        n = len(pos)
        cfg = {k: SimConfig(n_grid=64, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=1.0 / (substeps * 1e-4),
                            substep_dt=1e-4, threads=k) for k in (1, 2)}
        sims = {k: DifferentiableSim(pos, config=c, device=device, checkpoint_every=16, volume=vol,
                                     grid_store_mb=GRID_STORE_MB) for k, c in cfg.items()}
        weights = torch.from_numpy(np.random.default_rng(0).standard_normal((1, n, 3)).astype(np.float32))
        times = {k: [] for k in sims}
        for rep in range(reps + 1):
            for k, sim in sims.items():
                params = [torch.full((n,), np.log(1e5), requires_grad=True), torch.full((n,), 0.3),
                          torch.full((n,), 1000.0), torch.zeros((n, 3))]
                t0 = time.perf_counter()
                P, C = sim(*params, 1)
                t1 = time.perf_counter()
                ((P * weights).sum() + C.sum()).backward()
                if rep:  # the first round loads the kernels
                    times[k].append((t1 - t0, time.perf_counter() - t1))
        best = {k: np.min(np.array(t), axis=0) * 1e3 / substeps for k, t in times.items()}
        emit(case="threads_crossover", n=n, threads=sims[2].n_threads,
             forward_ms_per_substep={k: round(float(b[0]), 3) for k, b in best.items()},
             backward_ms_per_substep={k: round(float(b[1]), 3) for k, b in best.items()},
             forward_speedup_2_threads=round(float(best[1][0] / best[2][0]), 3),
             backward_speedup_2_threads=round(float(best[1][1] / best[2][1]), 3))


# gradient variants: DifferentiableSim options ("after" keeps P2G grids as estimation does: GRID_STORE_MB)
GRADIENT_VARIANTS = {"before": dict(adjoints="generated", grid_store_mb=0.0),
                     "hand_recompute": dict(adjoints="hand", grid_store_mb=0.0),
                     "grids_only": dict(adjoints="hand"),
                     "after": dict(adjoints="hand")}


def gradient_case(n_target: int, n_grid: int, substeps: int, checkpoint_every: int | None, device: str,
                  threads: int | None = None, variant: str = "after") -> None:
    import torch

    from backend.mpm import DifferentiableSim, SimConfig

    pos, vol = jelly_block(n_target, n_grid)
    n = len(pos)
    cfg = SimConfig(n_grid=n_grid, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=1.0 / (substeps * 1e-4),
                    substep_dt=1e-4, **({} if threads is None else {"threads": threads}))
    options = dict(GRADIENT_VARIANTS[variant])
    if variant == "grids_only":  # the kept P2G grids without the kept stresses (as before they were kept)
        from backend.mpm import autograd
        autograd.GRID_RESERVE = float("inf")
    if "grid_store_mb" not in options:
        from backend.estimation.budget import GRID_STORE_MB
        options["grid_store_mb"] = GRID_STORE_MB
    sim = DifferentiableSim(pos, config=cfg, device=device, checkpoint_every=checkpoint_every, volume=vol, **options)
    rng = np.random.default_rng(0)
    weights = torch.from_numpy(rng.standard_normal((1, n, 3)).astype(np.float32))

    def params():
        return [torch.full((n,), np.log(1e5), requires_grad=True), torch.full((n,), 0.3, requires_grad=True),
                torch.full((n,), 1000.0, requires_grad=True), torch.zeros((n, 3), requires_grad=True)]

    # warm-up on a tiny copy (loads the kernels) so the peak RSS below is this run's own
    tiny = DifferentiableSim(pos[:8], config=cfg, device=device, checkpoint_every=checkpoint_every, volume=vol,
                             **options)
    P, C = tiny(torch.tensor(np.log(1e5), requires_grad=True), torch.tensor(0.3), torch.tensor(1000.0),
                torch.zeros(3), 1)
    P.sum().backward()  # loads the adjoint kernels too
    base = peak_rss_mb()
    p = params()
    t0, c0 = time.perf_counter(), time.process_time()
    P, C = sim(*p, 1)
    t_fwd, c_fwd = time.perf_counter() - t0, time.process_time() - c0
    loss = (P * weights).sum() + C.sum()
    t0, c0 = time.perf_counter(), time.process_time()
    loss.backward()
    t_bwd, c_bwd = time.perf_counter() - t0, time.process_time() - c0
    ok = all(torch.isfinite(t.grad).all().item() for t in p)
    emit(case="gradient", device=device, n=n, n_grid=n_grid, substeps=substeps, threads=getattr(sim, "n_threads", 1),
         checkpoint_every=checkpoint_every, variant=variant, forward_ms_per_substep=1e3 * t_fwd / substeps,
         backward_ms_per_substep=1e3 * t_bwd / substeps, backward_over_forward=t_bwd / t_fwd,
         forward_cpu_ms_per_substep=1e3 * c_fwd / substeps, backward_cpu_ms_per_substep=1e3 * c_bwd / substeps,
         backward_over_forward_cpu=c_bwd / c_fwd,
         peak_rss_mb=peak_rss_mb(), peak_rss_growth_mb=peak_rss_mb() - base,
         growth_mb_per_substep=(peak_rss_mb() - base) / substeps,
         grads_finite=ok)


def object_on_table(n_grid: int = 48):
    """A jelly block on an anchored table slab 4 cells thick (as much table as object), 8 per cell."""
    sp = 0.5 / (n_grid - 6)
    axes = lambda lo, hi: [np.arange(a + sp / 2, b, sp) for a, b in zip(lo, hi)]  # noqa: E731
    slab = np.stack(np.meshgrid(*axes((0.2, 0.2, 0.1), (0.8, 0.8, 0.1 + 8 * sp)), indexing="ij"), -1).reshape(-1, 3)
    top = 0.1 + 8 * sp
    block = np.stack(np.meshgrid(*axes((0.35, 0.35, top), (0.65, 0.65, top + 0.3)), indexing="ij"), -1)
    pos = np.concatenate([slab, block.reshape(-1, 3)]).astype(np.float32)
    return pos, np.arange(len(pos)) < len(slab), sp ** 3


def frozen_case(device: str, reps: int = 4) -> None:
    from backend.mpm import DifferentiableSim, MPMSolver, ParticleState, Poke, SimConfig

    pos, anchor, vol = object_on_table()
    n = len(pos)
    cfg = lambda: SimConfig(n_grid=48, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=1.0 / (SUBSTEPS * 1e-4),  # noqa
                            substep_dt=1e-4, threads=1,
                            pokes=[Poke(center=(0.5, 0.5, 0.5), radius=0.1, direction=(1, 0, 0), strength=40.0)])
    variants = {"A_all_simulated": False, "B_frozen_left_out": True}
    sims = {k: MPMSolver(ParticleState(pos, E=1e5, nu=0.3, rho=1000.0, anchor=anchor, volume=vol), cfg(), device,
                         freeze_anchors=f) for k, f in variants.items()}
    for sim in sims.values():
        sim.step_frame(outputs=False)
    times = {k: [] for k in sims}
    for _ in range(reps):
        for k, sim in sims.items():
            times[k].append(time_frame(sim))
    same = bool(np.array_equal(*(sim.step_frame().positions for sim in sims.values())))
    for k, sim in sims.items():
        emit(case="frozen_forward_" + k, device=device, n=n, anchored=int(anchor.sum()), simulated=sim.n_simulated,
             ms_per_frame=1e3 * min(t[0] for t in times[k]), ms_per_frame_cpu=1e3 * min(t[1] for t in times[k]),
             substeps=sim.n_substeps_per_frame, same_positions=same)
    import torch

    dsims = {k: DifferentiableSim(pos, anchor=anchor, config=cfg(), volume=vol, device=device, freeze_anchors=f)
             for k, f in variants.items()}
    w = torch.tensor(np.random.default_rng(0).normal(size=(1, n, 3)), dtype=torch.float32)
    rows = {k: [] for k in dsims}
    for _ in range(reps):
        for k, sim in dsims.items():
            log_E = torch.full((n,), float(np.log(1e5)), requires_grad=True)
            t0, c0 = time.perf_counter(), time.process_time()
            x, _ = sim(log_E, torch.full((n,), 0.3), torch.full((n,), 1000.0), torch.zeros(n, 3), 1)
            t1, c1 = time.perf_counter(), time.process_time()
            (x * w).sum().backward()
            rows[k].append((t1 - t0, c1 - c0, time.perf_counter() - t1, time.process_time() - c1, log_E.grad))
    same = bool(torch.equal(rows["A_all_simulated"][-1][4], rows["B_frozen_left_out"][-1][4]))
    for k, sim in dsims.items():
        best = lambda i: 1e3 * min(r[i] for r in rows[k])  # noqa: E731
        emit(case="frozen_gradient_" + k, device=device, n=n, simulated=sim.n, substeps=SUBSTEPS,
             forward_ms=best(0), forward_ms_cpu=best(1), backward_ms=best(2), backward_ms_cpu=best(3),
             same_gradient=same)


def pipeline_case(device: str, reps: int = 5) -> None:
    import statistics

    import torch

    from backend.estimation.budget import GRID_STORE_MB
    from backend.mpm import DifferentiableSim, SimConfig
    from backend.mpm.autograd import DifferentiableSim as Sim

    pos, vol = jelly_block(2700, 32)
    n, substeps = len(pos), 256
    cfg = SimConfig(n_grid=32, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=1.0 / (substeps * 1e-4),
                    substep_dt=1e-4, gravity=(0.0, 0.0, -9.81))
    sim = DifferentiableSim(pos, config=cfg, device=device, volume=vol, grid_store_mb=GRID_STORE_MB / 64)
    pipelined = Sim._pipelined
    w = torch.tensor(np.random.default_rng(0).normal(size=(1, n, 3)), dtype=torch.float32)
    rows: dict = {"A_serial": [], "B_pipelined": []}
    for _ in range(reps):
        for k in rows:
            Sim._pipelined = pipelined if k == "B_pipelined" else (lambda self: False)
            log_E = torch.full((n,), float(np.log(1e5)), requires_grad=True)
            x, _ = sim(log_E, torch.full((n,), 0.3), torch.full((n,), 1000.0), torch.zeros(n, 3), 1)
            t0, c0 = time.perf_counter(), time.process_time()
            (x * w).sum().backward()
            rows[k].append((time.perf_counter() - t0, time.process_time() - c0, log_E.grad))
    Sim._pipelined = pipelined
    same = bool(torch.equal(rows["A_serial"][-1][2], rows["B_pipelined"][-1][2]))
    for k, r in rows.items():
        emit(case="recompute_pipeline_" + k, device=device, n=n, threads=sim.n_threads, substeps=substeps,
             backward_s_median=statistics.median(x[0] for x in r),
             backward_cpu_s_median=statistics.median(x[1] for x in r),
             pipelined_available=sim._pipelined(), same_gradient=same)


def grid_adjoint_case(device: str, reps: int = 5, launches: int = 1000) -> None:
    import warp as wp

    from backend.mpm import BoxCollider, Ground, SimConfig
    from backend.mpm.adjoints import grid_update_adjoint
    from backend.mpm.boundary import build_boundaries
    from backend.mpm.core import build_grid_info
    from backend.mpm.grid import GridMapping
    from backend.mpm.kernels import grid_update
    from backend.mpm.replay import Replayer

    obstacles = {"walls": {}, "ground_and_collider": dict(
        ground=Ground(height=0.4, kind="frictional", friction=0.5),
        colliders=[BoxCollider(times=(0.0, 1.0), centers=((0.3, 0.5, 0.5), (0.7, 0.5, 0.5)),
                               half_extents=(0.1, 0.1, 0.1), kind="slip")])}
    rng = np.random.default_rng(0)
    nodes = 16 ** 3
    mass = rng.uniform(0.5, 2.0, nodes) * (rng.random(nodes) > 0.45)
    mv = np.concatenate([rng.standard_normal((nodes, 3)) * 0.01 * mass[:, None], mass[:, None]], 1)
    adj_v = rng.standard_normal((nodes, 3)).astype(np.float32)
    launch = Replayer(device) if device == "cpu" else wp.launch
    for name, extra in obstacles.items():
        cfg = SimConfig(n_grid=24, domain_min=(0, 0, 0), domain_max=(1, 1, 1), gravity=(0, 0, -9.81), fps=24,
                        **extra)
        grid = GridMapping.build(cfg, np.array([[0.5, 0.5, 0.5]]))
        bnd = build_boundaries(cfg, grid.domain_min, grid.domain_max, device, grid.origin)
        grid_mv = wp.array(mv.astype(np.float32), dtype=wp.vec4, device=device, requires_grad=True)
        grid_v = wp.zeros(nodes, dtype=wp.vec3, device=device, requires_grad=True)
        head = [grid_mv, wp.zeros(24 ** 3, dtype=wp.int32, device=device), 0,
                build_grid_info(grid, (4, 4, 4), (16, 16, 16)), bnd, wp.vec3(0.0, 0.0, -0.001), 1.0, 100.0, 0.1]
        args = [*head, 0, grid_v]
        hand_out = wp.zeros(nodes, dtype=wp.vec4, device=device)
        hand_in = wp.zeros(nodes, dtype=wp.vec3, device=device)
        runs = {"A_generated": lambda: (grid_v.grad.assign(adj_v), launch_adjoint(launch, grid_update, nodes, args)),
                "B_hand": lambda: (hand_in.assign(adj_v), launch(grid_update_adjoint, nodes,
                                                                   inputs=[*head, hand_in, hand_out]))}
        best = {k: float("inf") for k in runs}
        for _ in range(reps):
            for k, run in runs.items():
                wp.synchronize_device(device)
                t0 = time.perf_counter()
                for _ in range(launches):
                    run()
                wp.synchronize_device(device)
                best[k] = min(best[k], (time.perf_counter() - t0) / launches * 1e6)
        grid_mv.grad.zero_()
        hand_out.zero_()
        runs["A_generated"]()
        runs["B_hand"]()
        a, b = grid_mv.grad.numpy(), hand_out.numpy()
        emit(case="grid_adjoint", device=device, boundaries=name, nodes=nodes,
             us_per_launch={k: round(v, 1) for k, v in best.items()},
             speedup=round(best["A_generated"] / best["B_hand"], 2),
             max_difference=float(np.abs(a - b).max()), max_value=float(np.abs(a).max()))


def launch_adjoint(launch, kernel, dim: int, args: list) -> None:
    """warp's generated adjoint of kernel(args), as the backward launches it (replayed on the CPU)."""
    import warp as wp

    from backend.mpm.threads import _adjoint_of

    adj = [_adjoint_of(a) for a in args]
    if hasattr(launch, "adjoint"):
        launch.adjoint(kernel, dim, args, adj)
    else:
        wp.launch(kernel, dim, inputs=args, adj_inputs=adj, adjoint=True)


def rest_case(device: str) -> None:
    """Rest state of a clamped bar 6 cells thick (20 long, E 2 MPa: it sags about 1% of its length)."""
    from backend.mpm import ParticleState, SimConfig
    from backend.mpm.rest import solve_rest_state

    dx, sp = 0.01, 0.005
    axes = [np.arange(a + sp / 2, b, sp) for a, b in ((0.02, 0.25), (0.05, 0.07), (0.10, 0.16))]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    cfg = SimConfig(n_grid=40, domain_min=(0, 0, 0), domain_max=(0.34, 0.12, 0.24), fps=24)
    ps = ParticleState(pos, E=2e6, nu=0.3, rho=1000.0, anchor=pos[:, 0] < 0.05, volume=sp ** 3)
    solve_rest_state(ps, cfg, device, max_iterations=1, max_substeps=50)  # warm-up (kernel loads)
    rest = solve_rest_state(ps, cfg, device, tolerance=1e-3)
    emit(case="rest_state", device=device, n=len(pos), n_grid=40, dx=dx, iterations=rest.iterations,
         substeps=rest.substeps, seconds=rest.seconds, residual=rest.residual, converged=rest.converged,
         ms_per_substep=1e3 * rest.seconds / max(rest.substeps, 1))


def run_subprocess(args: list[str], root: str | None = None, label: str | None = None) -> list[dict]:
    """Run this script with args in a subprocess; prints and returns its JSON records."""
    env = dict(os.environ, MPM_BENCH_ROOT=root) if root else None
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True, env=env)
    records = []
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line) if label is None else {"tree": label, **json.loads(line)}
            records.append(record)
            print(json.dumps(record), flush=True)
    if out.returncode != 0:
        emit(case="error", args=args, stderr=out.stderr[-2000:])
    return records


def gradient_cases(device: str, quick: bool = False) -> None:
    """Before / after figures of the backward, in one run (see the module docstring)."""
    if quick:
        for variant in GRADIENT_VARIANTS:
            run_subprocess(["--grad-case", "1000", "16", "8", "4", "auto", variant, "--device", device])
        return
    summary = {}
    for threads in (("1", "auto") if device == "cpu" else ("auto",)):
        for ck in ("none", "8"):
            for variant in GRADIENT_VARIANTS:
                if ck == "none" and variant in ("hand_recompute", "grids_only"):
                    continue  # nothing is recomputed on the full tape
                for r in run_subprocess(["--grad-case", "10000", "64", "32", ck, threads, variant, "--device", device]):
                    if r.get("case") == "gradient":
                        summary[f"threads_{r['threads']}/ckpt_{ck}/{variant}"] = round(r["backward_over_forward_cpu"], 3)
    # the memory bound: one 768-substep frame at 10k particles, checkpointed
    for variant in ("before", "grids_only", "after"):
        for r in run_subprocess(["--grad-case", "10000", "64", "768", "16", "auto", variant, "--device", device]):
            if r.get("case") == "gradient":
                summary[f"768_substeps/{variant}/peak_rss_mb"] = round(r["peak_rss_mb"], 1)
    emit(case="gradient_summary", backward_over_forward_cpu_and_peak_rss=summary)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gradient", action="store_true", help="only the gradient cases (before / after)")
    ap.add_argument("--grad-case", nargs=6, metavar=("N", "NGRID", "SUBSTEPS", "CKPT", "THREADS", "VARIANT"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--forward-case", nargs=3, metavar=("N", "NGRID", "REPS"), help=argparse.SUPPRESS)
    ap.add_argument("--baseline", metavar="DIR", help="A/B the forward throughput against the source tree DIR")
    ap.add_argument("--frozen-anchors", action="store_true", help="only the frozen-anchors A/B")
    ap.add_argument("--pipeline", action="store_true", help="only the recomputation-on-the-free-core A/B")
    ap.add_argument("--grid-adjoint", action="store_true", help="only the grid-update adjoint A/B")
    ap.add_argument("--threads-crossover", action="store_true",
                    help="only 1 against 2 threads at small sizes (where a second thread starts to pay)")
    args = ap.parse_args()
    import warp as wp

    from backend.mpm.core import init_warp
    init_warp(args.device)  # keeps warp's INFO logging off stdout

    if args.forward_case:
        n, ng, reps = map(int, args.forward_case)
        forward_case(n, ng, args.device, reps)
        return
    if args.baseline:
        emit(case="info", note="A/B in one run, alternating subprocesses: A = --baseline tree, B = this tree")
        for _ in range(2):
            for label, root in (("A_baseline", os.path.abspath(args.baseline)), ("B_this", None)):
                run_subprocess(["--forward-case", "50000", "64", "5", "--device", args.device], root, label)
        return
    if args.grad_case:
        n, ng, ss, ck, th, variant = args.grad_case
        gradient_case(int(n), int(ng), int(ss), None if ck == "none" else int(ck), args.device,
                      None if th == "auto" else int(th), variant)
        return
    emit(case="info", note="machine shared with other jobs: wall-time figures are noisy; *_cpu is steadier",
         cpu_count=os.cpu_count(), warp=wp.config.version)
    only = {"gradient": gradient_cases, "threads_crossover": threads_crossover_case, "frozen_anchors": frozen_case,
            "pipeline": pipeline_case, "grid_adjoint": grid_adjoint_case}  # flags that run one group of cases
    for flag, cases in only.items():
        if getattr(args, flag):
            cases(args.device)
            return
    if args.quick:
        forward_case(2000, 32, args.device, reps=2)
        if args.device == "cpu":
            threads_case(5000, 32, args.device, reps=2)
        rest_case(args.device)
        gradient_cases(args.device, quick=True)
        return
    cpu = args.device == "cpu"
    sizes = ((10_000, 64), (50_000, 64), (200_000, 64), (50_000, 100)) if cpu else ((50_000, 64), (200_000, 64))
    for n, ng in sizes:
        forward_case(n, ng, args.device, reps=5 if n < 200_000 else 3)
    if cpu:  # threads are a CPU matter; the cell sort A/B is known
        threads_case(50_000, 64, args.device, reps=5)
        threads_crossover_case(args.device)
        ab_case(50_000, 64, args.device, reps=5)
    frozen_case(args.device)
    pipeline_case(args.device)
    grid_adjoint_case(args.device)
    rest_case(args.device)
    gradient_cases(args.device)


if __name__ == "__main__":
    main()
