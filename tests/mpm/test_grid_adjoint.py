"""The hand-written grid-update adjoint (adjoints.grid_update_adjoint) against warp's generated adjoint of
kernels.grid_update, node by node: walls alone (inner nodes take the Jacobian-free path) and walls, ground and
a moving collider, of every boundary kind; fixed nodes, empty and denormal nodes, speeds over the one-cell cap."""

from __future__ import annotations

import numpy as np
import pytest
import warp as wp

from backend.mpm import Boundary, BoxCollider, Ground, SimConfig
from backend.mpm.adjoints import grid_update_adjoint
from backend.mpm.boundary import build_boundaries
from backend.mpm.core import build_grid_info
from backend.mpm.grid import GridMapping
from backend.mpm.kernels import grid_update
from backend.mpm.threads import _adjoint_of

N = 12
KINDS = ("sticky", "slip", "frictional")


def _setup(kind: str, obstacles: bool, rng):
    """A 12^3 grid (walls three node layers in), with obstacles a ground two cells up and a box collider
    moving through its middle; nodes of every sort, with momenta in every direction."""
    dmin, dmax = np.zeros(3), np.ones(3)
    extra = {}
    if obstacles:
        extra = {"ground": Ground(height=0.25, kind=kind, friction=0.6),
                 "colliders": [BoxCollider(times=(0.0, 1.0), centers=((0.3, 0.5, 0.5), (0.7, 0.5, 0.5)),
                                           half_extents=(0.2, 0.15, 0.25), kind=kind, friction=0.3)]}
    cfg = SimConfig(n_grid=N, domain_min=tuple(dmin), domain_max=tuple(dmax), gravity=(0, 0, -9.81), fps=24,
                    walls=Boundary(kind, 0.4), **extra)
    grid = GridMapping.build(cfg, np.array([[0.5, 0.5, 0.5]]))
    bnd = build_boundaries(cfg, grid.domain_min, grid.domain_max, "cpu", grid.origin)
    g = build_grid_info(grid)
    nodes = N ** 3
    mass = rng.uniform(0.5, 2.0, nodes)
    mass[rng.random(nodes) < 0.1] = 0.0
    mass[rng.random(nodes) < 0.05] = 1e-40  # a B-spline tail's denormal mass
    mom = rng.standard_normal((nodes, 3)) * mass[:, None] * rng.choice([0.1, 1.0, 30.0], (nodes, 1))
    mv = np.concatenate([mom, mass[:, None]], axis=1).astype(np.float32)
    fixed = (rng.random(nodes) < 0.1).astype(np.int32)
    return g, bnd, mv, fixed, 20.0  # v_limit (m/s): some nodes are capped


@pytest.mark.parametrize("obstacles", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_the_hand_written_grid_update_adjoint_is_warps_generated_one(kind, obstacles):
    rng = np.random.default_rng(KINDS.index(kind))
    g, bnd, mv, fixed, v_limit = _setup(kind, obstacles, rng)
    nodes = len(mv)
    grid_mv = wp.array(mv, dtype=wp.vec4, requires_grad=True)
    fixed_arr = wp.array(fixed, dtype=wp.int32)
    grid_v = wp.zeros(nodes, dtype=wp.vec3, requires_grad=True)
    body_dv, damp, t = wp.vec3(0.1, -0.2, -0.4), 0.98, 0.4
    args = [grid_mv, fixed_arr, 1, g, bnd, body_dv, damp, v_limit, t, 0, grid_v]
    wp.launch(grid_update, nodes, inputs=args)
    v = grid_v.numpy()
    speed = np.linalg.norm(v, axis=1)
    assert (speed > v_limit * (1 - 1e-6)).sum() > 10, "some nodes are capped"
    assert (np.abs(v).sum(1) == 0).sum() > 0.15 * nodes  # empty, fixed, stopped at a boundary

    adj_v = rng.standard_normal((nodes, 3)).astype(np.float32)
    grid_v.grad.assign(adj_v)
    wp.launch(grid_update, nodes, inputs=args, adj_inputs=[_adjoint_of(a) for a in args], adjoint=True)
    generated = grid_mv.grad.numpy().astype(np.float64)
    assert not grid_v.grad.numpy().any()  # consumed

    hand, adj_v_arr = wp.zeros(nodes, dtype=wp.vec4), wp.array(adj_v, dtype=wp.vec3)
    wp.launch(grid_update_adjoint, nodes, inputs=[grid_mv, fixed_arr, 1, g, bnd, body_dv, damp, v_limit, t,
                                                  adj_v_arr, hand])
    assert not adj_v_arr.numpy().any()  # consumed alike
    hand = hand.numpy().astype(np.float64)
    held = (mv[:, 3] <= 1e-18) | (fixed != 0)
    assert np.all(hand[held] == 0) and np.abs(generated[held]).max() == 0
    # Each node's own scale: dL/d(momentum) ~ |dL/dv| / m, dL/dm ~ |dL/dv| |v| / m (the generated adjoint
    # leaves rounding residue, ~1e-7 of that, where the exact answer is 0: a capped velocity along a wall)
    m = mv[~held, 3].astype(np.float64)
    speed = np.linalg.norm(mv[~held, :3], axis=1) / m
    scale = (np.linalg.norm(adj_v[~held], axis=1) / m * (1.0 + speed))[:, None]
    err = np.abs(hand[~held] - generated[~held]) / scale
    assert err.max() < 1e-5, err.max()
    assert np.abs(generated[~held]).max() > 0
    free = damp * adj_v[~held] / m[:, None]  # what a node away from every boundary and the cap gets
    turned = np.linalg.norm(hand[~held, :3] - free, axis=1) > 1e-3 * np.linalg.norm(free, axis=1)
    assert (turned & (np.abs(hand[~held, :3]).sum(1) > 0)).sum() > 10  # boundaries that pass part of it
