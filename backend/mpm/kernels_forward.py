"""Forward-only builds of the substep kernels (no adjoint code: faster first compile, used when
no tape is recording)."""

from __future__ import annotations

import warp as wp

from .kernels import GridInfo, bspline_weights, g2p_impl, grid_update_impl, p2g_impl, stencil_base

wp.set_module_options({"enable_backward": False})

p2g = wp.kernel(p2g_impl, module=__name__)
grid_update = wp.kernel(grid_update_impl, module=__name__)
g2p = wp.kernel(g2p_impl, module=__name__)


@wp.kernel
def max_speed(v: wp.array(dtype=wp.vec3), out: wp.array(dtype=float)):
    """out[0] = max |v| (m/s); non-finite velocities count as +inf."""
    p = wp.tid()
    s = wp.length(v[p])
    if not wp.isfinite(s):
        s = 3.0e38
    wp.atomic_max(out, 0, s)


@wp.kernel
def anchor_node_mass(
    x: wp.array(dtype=wp.vec3),
    mass: wp.array(dtype=float),
    anchor: wp.array(dtype=wp.int32),
    g: GridInfo,
    total: wp.array(dtype=float),
    anchored: wp.array(dtype=float),
):
    """Per-node particle mass, all particles and anchored ones (to pick the fixed nodes); g spans
    the whole grid here."""
    p = wp.tid()
    bx, by, bz, fx = stencil_base(x[p], g)
    w = bspline_weights(fx)
    ny = g.box_dims[1]
    nz = g.box_dims[2]
    for i in range(3):
        for j in range(3):
            for k in range(3):
                idx = ((bx + i) * ny + by + j) * nz + bz + k
                wm = w[i, 0] * w[j, 1] * w[k, 2] * mass[p]
                wp.atomic_add(total, idx, wm)
                if anchor[p] != 0:
                    wp.atomic_add(anchored, idx, wm)


@wp.kernel
def cell_bounds(x: wp.array(dtype=wp.vec3), g: GridInfo, out: wp.array(dtype=wp.int32)):
    """out[0:3] = min and out[3:6] = max grid cell index of the particles, per axis."""
    p = wp.tid()
    xg = (x[p] - g.origin) * g.inv_dx
    for a in range(3):
        c = wp.clamp(int(wp.floor(xg[a])), 0, g.n - 1)
        wp.atomic_min(out, a, c)
        wp.atomic_max(out, 3 + a, c)
