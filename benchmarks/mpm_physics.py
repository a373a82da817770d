"""Physics figures of the MPM solver against analytic answers (issue 10). Prints one JSON object per line.

    .venv/bin/python benchmarks/mpm_physics.py            # all figures (several minutes on 2 cores)
    .venv/bin/python benchmarks/mpm_physics.py clamp      # one group: clamp | bending | offset | rest

clamp:   a clamped bar (6 cells thick, 20 long, nu = 0) under gravity: tip sag against Timoshenko at 5 and
         15 first-mode periods (creep), and with damping 0.5 w1 and 4 w1 (damping sensitivity).
bending: the first bending frequency of a bar 6 cells thick at n_grid 64 against beam theory.
offset:  the same scene at world offsets 0, 10 m and 1 km: largest trajectory difference / object size.
rest:    a clamped bar with its rest state under gravity: the residual reached, and the drift over 2 s.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# benchmarks/mpm.py would shadow the tests' `mpm` package: take this folder off the path.
sys.path = [ROOT, os.path.join(ROOT, "tests")] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]

from mpm.mpm_scenes import cantilever  # noqa: E402  (the tests' scene builder: one definition of the bar)

RHO, G_ACC = 1000.0, 9.81


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def beam_theory(E: float, geo: dict) -> tuple[float, float]:
    """Timoshenko tip sag of a cantilever under its own weight (nu = 0, kappa = 5/6) and the first
    bending angular frequency (Euler-Bernoulli with Dunkerley's shear correction)."""
    L, h = geo["L"], geo["h"]
    kappa, G = 5.0 / 6.0, E / 2.0
    delta = RHO * G_ACC * L ** 4 / (8 * E * h ** 2 / 12) + RHO * G_ACC * L ** 2 / (2 * kappa * G)
    w_b = 1.8751 ** 2 * math.sqrt(E * h ** 2 / (12 * RHO)) / L ** 2
    w_s = math.pi / (2 * L) * math.sqrt(kappa * G / RHO)
    return delta, 1.0 / math.sqrt(1 / w_b ** 2 + 1 / w_s ** 2)


def tip_history(pos, anchor, geo, E, w1, damping_per_w1, periods, fpp=8):
    from backend.mpm import MPMSolver, ParticleState, SimConfig

    tip = pos[:, 0] > pos[:, 0].max() - geo["sp"] / 2
    cfg = SimConfig(n_grid=geo["n_grid"], domain_min=(0, 0, 0), domain_max=geo["domain"],
                    fps=fpp * w1 / (2 * math.pi), damping=damping_per_w1 * w1)
    sim = MPMSolver(ParticleState(pos, E=E, nu=0.0, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3), cfg)
    z0 = pos[tip, 2].mean()
    return np.array([z0 - sim.step_frame(outputs=False).positions[tip, 2].mean() for _ in range(periods * fpp)])


def clamp() -> None:
    E = 5e6
    pos, anchor, geo = cantilever(dx=0.01, length_cells=20, thickness_cells=6, width_cells=2, grip_cells=3)
    delta, w1 = beam_theory(E, geo)
    light = tip_history(pos, anchor, geo, E, w1, 0.5, 15)
    heavy = tip_history(pos, anchor, geo, E, w1, 4.0, 5)
    s5, s15, h5 = light[5 * 8 - 1], light[-1], heavy[-1]
    emit(case="clamp", cells_across=6, timoshenko_m=delta, sag_5T_m=s5, sag_error=s5 / delta - 1,
         creep_5T_to_15T=s15 / s5 - 1, damping_0p5w1_vs_4w1=h5 / s5 - 1, period_s=2 * math.pi / w1)


def bending() -> None:
    E = 5e6
    pos, anchor, geo = cantilever(dx=0.01, length_cells=46, thickness_cells=6, width_cells=2, grip_cells=4)
    delta, w1 = beam_theory(E, geo)
    fpp = 16
    u = tip_history(pos, anchor, geo, E, w1, 0.0, 3, fpp)
    u = u - u.mean()
    t = np.arange(1, len(u) + 1) * 2 * math.pi / w1 / fpp
    i = np.nonzero(u[:-1] * u[1:] < 0)[0]
    cross = t[i] - u[i] * (t[i + 1] - t[i]) / (u[i + 1] - u[i])
    w = math.pi / np.diff(cross).mean()
    emit(case="bending", n_grid=geo["n_grid"], cells_across=6, f_theory_hz=w1 / (2 * math.pi),
         f_measured_hz=w / (2 * math.pi), error=w / w1 - 1)


def offset() -> None:
    from backend.mpm import MPMSolver, ParticleState
    from mpm.test_world_offset import OFFSETS, SIZE, scene

    runs = []
    for off in OFFSETS:
        pos, cfg = scene(off)
        sim = MPMSolver(ParticleState(pos, E=2e4, nu=0.3, rho=500), cfg)
        runs.append(np.stack([sim.step_frame(outputs=False).positions - np.asarray(off) for _ in range(6)]))
    for off, r in zip(OFFSETS[1:], runs[1:]):
        emit(case="offset", offset_m=off, max_difference_over_size=float(np.abs(r - runs[0]).max() / SIZE))


def rest() -> None:
    from backend.mpm import MPMSolver, ParticleState, SimConfig
    from backend.mpm.rest import solve_rest_state

    E = 2e6
    pos, anchor, geo = cantilever(dx=0.02, length_cells=12, thickness_cells=4, width_cells=2, grip_cells=3)
    cfg = SimConfig(n_grid=geo["n_grid"], domain_min=(0, 0, 0), domain_max=geo["domain"], fps=24)
    size = float(np.ptp(pos, axis=0).max())

    def drift(F0, frames=48):
        sim = MPMSolver(ParticleState(pos, E=E, nu=0.3, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3, F0=F0), cfg)
        return max(float(np.abs(sim.step_frame(outputs=False).positions - pos).max()) for _ in range(frames)) / size

    t0 = time.perf_counter()
    r = solve_rest_state(ParticleState(pos, E=E, nu=0.3, rho=RHO, anchor=anchor, volume=geo["sp"] ** 3), cfg)
    emit(case="rest", residual=r.residual, iterations=r.iterations, substeps=r.substeps,
         seconds=time.perf_counter() - t0, drift_2s_over_size_with_rest=drift(r.F),
         drift_2s_over_size_without=drift(None))


def main() -> None:
    from backend.mpm.core import init_warp

    init_warp("cpu")
    emit(case="info", note="machine shared with other jobs; figures are physics, not timings")
    groups = {"clamp": clamp, "bending": bending, "offset": offset, "rest": rest}
    for name in sys.argv[1:] or list(groups):
        groups[name]()


if __name__ == "__main__":
    main()
