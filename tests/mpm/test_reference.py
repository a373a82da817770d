"""The warp substep (CPU) against the float64 torch reference (backend/mpm/reference.py), stage by stage and
whole, for every material model, on a small random scene with non-trivial F, C and plastic state that
touches a frictional wall, a slip ground, a moving sticky collider, a poke, a gusting wind and anchored nodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import warp as wp

from backend.mpm import reference as ref
from backend.mpm.config import Boundary, BoxCollider, Ground, MaterialModel, Plasticity, Poke, SimConfig, Wind
from backend.mpm.boundary import body_acceleration
from backend.mpm.core import SimCore, State, init_warp
from backend.mpm.grid import GridMapping, lame
from backend.mpm import kernels
from backend.mpm.constitutive import PlasticParams, kirchhoff_stress, return_mapping
from mpm.mpm_scenes import random_rotations

N = 300
DT = 1.0e-3
T = 0.05
PLASTICITY = Plasticity(yield_stress=3.0e3, hardening=2.0, softening=0.5, viscosity=5.0, friction_angle_deg=30.0,
                        cohesion=0.01, snow_theta_c=0.025, snow_theta_s=0.0075, snow_hardening=10.0)
CONFIG = dict(n_grid=16, domain_min=(0, 0, 0), domain_max=(1, 1, 1), substep_dt=DT, gravity=(0.5, 0, -9.8),
              damping=3.0, threads=1, walls=Boundary(kind="frictional", friction=0.4),
              ground=Ground(height=0.25, kind="slip"), plasticity=PLASTICITY,
              colliders=[BoxCollider(times=(0.0, 0.1), centers=((0.33, 0.52, 0.55), (0.33, 0.62, 0.55)),
                                     half_extents=(0.083, 0.077, 0.3), kind="sticky")],
              winds=[Wind(direction=(0, 1, 0.2), strength=2.0, gust_frequency=3.0, gust_amplitude=0.5)],
              pokes=[Poke(center=(0.2, 0.4, 0.4), radius=0.12, direction=(1, 1, 0), strength=40.0, start=0.0, end=0.1)])
MODELS = list(MaterialModel)
# F that a return mapping projected is recomposed from warp's float32 svd3, whose U diag(s) V^T is off by
# up to ~7e-4 (|.|_max) for F within 15% of a rotation; everything else matches to float32 rounding.
SVD3_TOL = 1e-3


class Scene:
    """One random scene: particles (domain-local float32), a state, per-particle constants, on warp and torch."""

    def __init__(self, material: np.ndarray, seed: int = 0):
        init_warp("cpu")
        rng = np.random.default_rng(seed)
        world = rng.uniform((-0.03, 0.3, 0.2), (0.45, 0.7, 0.6), (N, 3))
        self.config = SimConfig(**CONFIG)
        self.grid = GridMapping.build(self.config, world)
        x = self.grid.to_local(world)
        # F = rotation x stretch around 1 (+-15%): every model strays from its rest and yield surfaces.
        stretch = np.exp(rng.uniform(-0.15, 0.15, (N, 3)))
        F = random_rotations(rng, N) @ (np.eye(3) * stretch[:, None, :]) @ random_rotations(rng, N)
        snow = material == int(MaterialModel.SNOW)
        self.state = {
            "x": x, "v": rng.normal(0.0, 0.5, (N, 3)), "C": rng.normal(0.0, 3.0, (N, 3, 3)), "F": F,
            "plastic": np.where(snow, rng.uniform(0.9, 1.1, N), rng.uniform(0.0, 0.05, N)),
            "x_err": rng.normal(0.0, 1e-8, (N, 3)), "F_err": rng.normal(0.0, 1e-8, (N, 3, 3)),
        }
        self.state = {k: np.asarray(v, np.float32) for k, v in self.state.items()}
        mu, lam = lame(rng.uniform(5e4, 2e5, N), rng.uniform(0.2, 0.4, N))
        vol = np.full(N, self.grid.dx ** 3 / 8)
        self.const = {"mu": mu, "lam": lam, "mass": 1000.0 * vol, "vol": vol}
        self.const = {k: np.asarray(v, np.float32) for k, v in self.const.items()}
        self.material = material.astype(np.int32)
        self.anchor = (world[:, 0] < world[:, 0].min() + 0.04) & (world[:, 2] > 0.45)  # a few, near the wall
        self.core = SimCore(self.config, self.grid, self.material, self.anchor, "cpu")
        self.wp_const = {k: wp.array(v, dtype=float) for k, v in self.const.items()}
        self.core.set_fixed_nodes(wp.array(x, dtype=wp.vec3), self.wp_const["mass"])

    # -- torch side
    def particles(self) -> ref.Particles:
        c = {k: ref.tensor(v) for k, v in self.const.items()}
        return ref.Particles(material=torch.as_tensor(self.material.astype(np.int64)),
                             anchor=torch.as_tensor(self.anchor), **c)

    def torch_state(self) -> dict:
        return {k: ref.tensor(v) for k, v in self.state.items()}

    def setup(self) -> ref.Setup:
        return ref.Setup.build(self.config, self.grid, self.core.fixed.numpy() if self.core.has_fixed else None)

    # -- warp side
    def warp_state(self) -> State:
        return State.from_numpy(self.state, "cpu")

    def substep(self) -> dict:
        st = self.warp_state()
        n3 = self.core.n_nodes
        grid_mv, grid_v = wp.zeros(n3, dtype=wp.vec4), wp.zeros(n3, dtype=wp.vec3)
        c = self.wp_const
        self.core.substep(st, st, c["mu"], c["lam"], c["mass"], c["vol"], grid_mv, grid_v, T, DT, 0, clear=True)
        return st.numpy()


def mixed_materials(seed=1):
    return np.random.default_rng(seed).integers(0, len(MODELS), N)


@pytest.fixture(scope="module")
def mixed():
    return Scene(mixed_materials())


def assert_close(actual, expected, rel, name, scale=None):
    """|a - e| <= rel * scale elementwise, scale = max|e| by default (float32 against float64: a tolerance
    relative to the scale)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if expected.size == 0:
        return
    scale = max(np.abs(expected).max() if scale is None else scale, 1e-30)
    err = np.abs(actual - expected).max() / scale
    assert err <= rel, f"{name}: max error {err:.2e} of the scale {scale:.3g} > {rel:.0e}"


# ------------------------------------------------------------------------------------ per stage
@wp.kernel
def stress_and_return(F: wp.array(dtype=wp.mat33), material: wp.array(dtype=wp.int32), plastic: wp.array(dtype=float),
                      mu: wp.array(dtype=float), lam: wp.array(dtype=float), pp: PlasticParams, dt: float,
                      tau: wp.array(dtype=wp.mat33), F_out: wp.array(dtype=wp.mat33),
                      plastic_out: wp.array(dtype=float)):
    p = wp.tid()
    tau[p] = kirchhoff_stress(F[p], material[p], plastic[p], mu[p], lam[p], pp.snow_xi)
    f, pl = return_mapping(F[p], material[p], plastic[p], mu[p], lam[p], pp, dt)
    F_out[p] = f
    plastic_out[p] = pl


def test_stress_and_return_mapping_of_every_model(mixed):
    s, c = mixed.state, mixed.wp_const
    tau, F_out, pl_out = wp.zeros(N, dtype=wp.mat33), wp.zeros(N, dtype=wp.mat33), wp.zeros(N, dtype=float)
    wp.launch(stress_and_return, N, inputs=[wp.array(s["F"], dtype=wp.mat33), mixed.core.material,
                                            wp.array(s["plastic"], dtype=float), c["mu"], c["lam"], mixed.core.pp, DT],
              outputs=[tau, F_out, pl_out])
    p, t = mixed.particles(), mixed.torch_state()
    tau_ref = ref.kirchhoff_stress(t["F"], p.material, t["plastic"], p.mu, p.lam, PLASTICITY)
    F_ref, pl_ref = ref.return_mapping(t["F"], p.material, t["plastic"], p.mu, p.lam, PLASTICITY, DT)
    for m in MODELS:
        sel = mixed.material == int(m)
        assert_close(tau.numpy()[sel], tau_ref[sel], 1e-4, f"{m.name} stress")  # float32 eig3 / svd3
        assert_close(F_out.numpy()[sel], F_ref[sel], SVD3_TOL, f"{m.name} return-mapped F")
        assert_close(pl_out.numpy()[sel], pl_ref[sel], 1e-4, f"{m.name} plastic state")
        if m > MaterialModel.STVK_HENCKY:  # the scene exercises the plastic flow, not only the elastic branch
            moved = np.abs(F_ref[sel].numpy() - t["F"][sel].numpy()).max(axis=(1, 2)) > 1e-6
            assert 0 < moved.sum() < sel.sum() or m == MaterialModel.SNOW, (m.name, moved.sum(), sel.sum())


def test_stress_and_return_mapping_at_the_edges(mixed):
    """F = I, isotropic expansion (sand goes to its tip with no deviator) and compression, a uniaxial stretch and
    a crushed axis (a singular value under MIN_STRETCH), for every model."""
    special = np.stack([np.eye(3), 1.05 * np.eye(3), 0.95 * np.eye(3), np.diag([1.3, 1.0, 1.0]),
                        np.diag([1.0, 1.0, 5e-5])])
    F = np.tile(special, (len(MODELS), 1, 1)).astype(np.float32)
    material = np.repeat(np.arange(len(MODELS)), len(special)).astype(np.int32)
    n = len(F)
    plastic = np.where(material == int(MaterialModel.SNOW), 1.0, 0.0).astype(np.float32)
    mu, lam = (np.full(n, v, np.float32) for v in lame(1e5, 0.3))
    tau, F_out, pl_out = wp.zeros(n, dtype=wp.mat33), wp.zeros(n, dtype=wp.mat33), wp.zeros(n, dtype=float)
    wp.launch(stress_and_return, n, inputs=[wp.array(F, dtype=wp.mat33), wp.array(material, dtype=wp.int32),
                                            wp.array(plastic, dtype=float), wp.array(mu, dtype=float),
                                            wp.array(lam, dtype=float), mixed.core.pp, DT],
              outputs=[tau, F_out, pl_out])
    t = {k: ref.tensor(v) for k, v in dict(F=F, plastic=plastic, mu=mu, lam=lam).items()}
    m = torch.as_tensor(material.astype(np.int64))
    tau_ref = ref.kirchhoff_stress(t["F"], m, t["plastic"], t["mu"], t["lam"], PLASTICITY)
    F_ref, pl_ref = ref.return_mapping(t["F"], m, t["plastic"], t["mu"], t["lam"], PLASTICITY, DT)
    assert np.isfinite(tau.numpy()).all()  # Hencky's log of the crushed axis too
    for k in range(n):
        name = f"{MODELS[material[k]].name} at F = {np.diag(F[k]).round(5).tolist()}"
        # a crushed F has tiny stresses: its rounding error is float32's of 2 mu (F - R) F^T
        scale = max(2 * mu[k], np.abs(tau_ref[k].numpy()).max())
        assert_close(tau.numpy()[k], tau_ref[k], 1e-4, name + ": stress", scale=scale)
        assert_close(F_out.numpy()[k], F_ref[k], 1e-5, name + ": F")
        assert_close(pl_out.numpy()[k], pl_ref[k], 1e-5, name + ": plastic", scale=1.0)  # a strain, or Jp ~ 1


def test_p2g(mixed):
    mv = wp.zeros(mixed.core.n_nodes, dtype=wp.vec4)
    launch_p2g(mixed, mixed.warp_state(), mv)
    mom, mass = ref.p2g(mixed.torch_state(), mixed.particles(), mixed.setup(), T, DT)
    n = mixed.grid.n
    got = mv.numpy().reshape(n, n, n, 4)
    assert_close(got[..., :3], mom, 2e-5, "node momentum")
    assert_close(got[..., 3], mass, 1e-6, "node mass")


def launch_p2g(sc: Scene, st: State, grid_mv):
    c, core = sc.wp_const, sc.core
    wp.launch(kernels.p2g, N, inputs=[st.x, st.v, st.C, st.F, st.plastic, core.material, c["mu"], c["lam"], c["mass"],
                                      c["vol"], core.g_full, core.pp, core.pokes, T, DT, 0], outputs=[grid_mv, None])


def test_grid_update_with_walls_ground_collider_and_anchors(mixed):
    core, n = mixed.core, mixed.grid.n
    mv = wp.zeros(core.n_nodes, dtype=wp.vec4)
    launch_p2g(mixed, mixed.warp_state(), mv)
    gv = wp.zeros(core.n_nodes, dtype=wp.vec3)
    body = [a * DT for a in body_acceleration(mixed.config, T)]
    wp.launch(kernels.grid_update, core.n_nodes,
              inputs=[mv, core.fixed, core.has_fixed, core.g_full, core.bnd, wp.vec3(*body),
                      float(np.exp(-CONFIG["damping"] * DT)), float(mixed.grid.dx / DT), T, 0], outputs=[gv])
    got_mv = ref.tensor(mv.numpy().reshape(n, n, n, 4))
    setup = mixed.setup()
    expected = ref.grid_update(got_mv[..., :3], got_mv[..., 3], setup, T, DT)
    assert_close(gv.numpy().reshape(n, n, n, 3), expected, 1e-6, "node velocity")
    # The scene reaches every kind of node the update treats differently.
    idx = torch.arange(n, dtype=torch.float64) * setup.dx
    pos = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1)
    occupied = got_mv[..., 3] > 0
    center, _ = ref.collider_motion(setup.colliders[0], T)
    assert (occupied & (pos[..., 0] <= setup.dom_min[0])).any(), "no mass at the wall"
    assert (occupied & (pos[..., 2] <= setup.ground[0])).any(), "no mass on the ground"
    assert (occupied & ((pos - ref.tensor(center)).abs() < ref.tensor(setup.colliders[0].half)).all(-1)).any()
    assert (occupied & setup.fixed).any(), "no anchored node"
    assert np.array_equal(ref.fixed_nodes(ref.tensor(mixed.state["x"]), ref.tensor(mixed.const["mass"]),
                                          torch.as_tensor(mixed.anchor), setup).numpy(), setup.fixed.numpy())


def test_g2p(mixed):
    rng = np.random.default_rng(5)
    n = mixed.grid.n
    grid_v = rng.normal(0.0, 0.5, (n, n, n, 3)).astype(np.float32)
    st = mixed.warp_state()
    out = State.zeros(N, "cpu")
    c, core = mixed.wp_const, mixed.core
    wp.launch(kernels.g2p, N, inputs=[st.x, st.x_err, st.F, st.F_err, st.plastic, core.material, core.anchor, c["mu"],
                                      c["lam"], wp.array(grid_v.reshape(-1, 3), dtype=wp.vec3), core.g_full, core.pp,
                                      DT, 0],
              outputs=[out.x, out.x_err, out.v, out.C, out.F, out.F_err, out.plastic, core.bad])
    expected = ref.g2p(mixed.torch_state(), mixed.particles(), ref.tensor(grid_v), mixed.setup(), DT)
    compare_states(out.numpy(), expected, mixed)


def compare_states(got: dict, expected: dict, sc: Scene):
    """Positions and F with the kernels' carried rounding error added back (the compensated sums)."""
    assert_close(got["x"] + got["x_err"].astype(np.float64), expected["x"], 1e-7, "x")
    assert_close(got["v"], expected["v"], 4e-5, "v")
    assert_close(got["C"], expected["C"], 4e-5, "C")
    projected = np.abs(expected["plastic"].numpy() - sc.state["plastic"]) > 0
    F = got["F"] + got["F_err"].astype(np.float64)
    assert_close(F[~projected], expected["F"][~projected], 1e-6, "F (elastic)")
    assert_close(F[projected], expected["F"][projected], SVD3_TOL, "F (projected)")
    assert_close(got["plastic"], expected["plastic"], 1e-4, "plastic")  # from svd3 strains, as F
    moved = ~sc.anchor
    assert np.array_equal(got["x"][~moved], sc.state["x"][~moved]), "anchored particles moved"


# ------------------------------------------------------------------------------------ whole substep
@pytest.mark.parametrize("model", MODELS, ids=[m.name.lower() for m in MODELS])
def test_substep_of_each_model(model):
    sc = Scene(np.full(N, int(model)), seed=int(model) + 10)
    expected = ref.substep(sc.torch_state(), sc.particles(), sc.setup(), T, DT)
    compare_states(sc.substep(), expected, sc)
