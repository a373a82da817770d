"""Gradients through every constitutive model against finite differences.

* The differentiable rollout (DifferentiableSim, warp's taped adjoints) w.r.t. log E and nu, for each
  elastic model and each plastic return mapping (the estimate job accepts every model of
  protocol.MATERIAL_MODELS, so estimation can differentiate through all of them), against central
  differences of the same rollout run by the float64 torch reference (backend/mpm/reference.py): the
  float32 rollout's own differences are too noisy across the yield surfaces' kinks.
* warp.autograd.gradcheck (warp's own finite-difference check) on tiny kernels that call the custom
  adjoints of constitutive.py (matrix square root and logarithm) and the stress of each elastic model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import warp as wp
import warp.autograd

from backend.mpm import DifferentiableSim, MaterialModel, Plasticity, SimConfig
from backend.mpm import reference as ref
from backend.mpm.constitutive import PlasticParams, kirchhoff_stress, return_mapping, sym_log, sym_sqrt
from backend.mpm.core import SimCore, init_warp, initial_state
from backend.mpm.grid import GridMapping, lame, plan_substeps
from backend.mpm.particles import rest_shape_matrices
from mpm.mpm_scenes import gradient_scene, random_rotations

N_FRAMES = 1
# Low yield limits: within the frame most particles of every plastic model flow (asserted below).
PLASTICITY = dict(yield_stress=150.0, hardening=1.0, softening=0.5, viscosity=0.05, friction_angle_deg=30.0,
                  cohesion=0.02, snow_theta_c=0.02, snow_theta_s=0.01, snow_hardening=5.0)
CFG = dict(n_grid=16, domain_min=(0, 0, 0), domain_max=(1, 1, 1), fps=30, substep_dt=2.5e-3, gravity=(0, 0, -9.8),
           threads=1)
PARAMS = ("log_E", "nu")
FD_STEP = 1e-6  # float64: far below any yield-surface kink, far above rounding
MODELS = list(MaterialModel)


@pytest.fixture(scope="module")
def scene():
    pos, params, weights, _ = gradient_scene((0.35, 0.4, 0.4), (0.6, 0.6, 0.6), 1 / 28, N_FRAMES, seed=3,
                                             stretch=(1.2, -0.72, -0.48), spin=0.4, nu_spread=0.04)
    return pos, params, weights


def config() -> SimConfig:
    return SimConfig(**CFG, plasticity=Plasticity(**PLASTICITY))


def adjoint_gradients(pos, model, params, weights) -> dict:
    """dL/d log E and dL/d nu of the warp rollout (taped adjoints through the torch bridge)."""
    sim = DifferentiableSim(pos, material_id=int(model), config=config(), checkpoint_every=None)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in PARAMS) for k, v in params.items()}
    P, C = sim(t["log_E"], t["nu"], t["rho"], t["v0"], N_FRAMES)
    ((P.double() * torch.from_numpy(weights[0])).sum() + (C.double() * torch.from_numpy(weights[1])).sum()).backward()
    return {k: t[k].grad.numpy() for k in PARAMS}


def reference_loss(pos, model, params, weights, final: dict | None = None) -> float:
    """The same rollout and loss in float64 (reference.substep), set up as DifferentiableSim does it;
    `final` receives the last state."""
    cfg = config()
    grid = GridMapping.build(cfg, pos)
    vol = np.full(len(pos), grid.default_volume(pos), np.float32).astype(np.float64)
    mu, lam = lame(np.exp(params["log_E"]), params["nu"])
    parts = ref.Particles(mu=ref.tensor(mu), lam=ref.tensor(lam), mass=ref.tensor(params["rho"] * vol),
                          vol=ref.tensor(vol), material=torch.full((len(pos),), int(model)),
                          anchor=torch.zeros(len(pos), dtype=torch.bool))
    x0 = grid.to_local(pos).astype(np.float64)
    state = {k: ref.tensor(v) for k, v in initial_state(x0, params["v0"], np.full(len(pos), int(model))).items()}
    a0 = rest_shape_matrices(None, vol).astype(np.float64)
    cov0 = ref.tensor(a0 @ np.transpose(a0, (0, 2, 1)))
    plan = plan_substeps(cfg, grid.dx, 0.0, 0.0)  # substep_dt is set: the plan ignores the speeds
    loss = 0.0
    for k, st in enumerate(ref.rollout(state, parts, ref.Setup.build(cfg, grid), plan.dt, N_FRAMES * plan.n)):
        if (k + 1) % plan.n == 0:
            f = k // plan.n
            world = pos + (st["x"].numpy() - x0)
            cov = (st["F"] @ cov0 @ st["F"].transpose(1, 2)).numpy()
            loss += float((world * weights[0][f]).sum() + (cov * weights[1][f]).sum())
    if final is not None:
        final.update(st)
    return loss


@pytest.mark.parametrize("model", MODELS, ids=[m.name.lower() for m in MODELS])
def test_rollout_gradient_matches_float64_finite_differences(scene, model):
    pos, params, weights = scene
    grads = adjoint_gradients(pos, model, params, weights)
    rng = np.random.default_rng(int(model))
    for name in PARAMS:
        direction = 1.0 + 0.5 * rng.standard_normal(params[name].shape)  # mostly one sign: a strong signal
        plus, minus = dict(params), dict(params)
        plus[name] = params[name] + FD_STEP * direction
        minus[name] = params[name] - FD_STEP * direction
        final = {}
        fd = (reference_loss(pos, model, plus, weights, final)
              - reference_loss(pos, model, minus, weights)) / (2 * FD_STEP)
        analytic = float((grads[name] * direction).sum())
        print(f"{model.name} d/d{name}: adjoint {analytic:.6g} fd {fd:.6g} rel {abs(analytic - fd) / abs(fd):.2e}")
        assert np.isfinite(analytic) and analytic == pytest.approx(fd, rel=0.01), name
    if model > MaterialModel.STVK_HENCKY:  # the return mapping did project (Jp starts at 1 for snow, else 0)
        flowed = (final["plastic"] != (1.0 if model == MaterialModel.SNOW else 0.0)).double().mean().item()
        print(f"{model.name}: {flowed:.0%} of the particles flowed")
        assert flowed > 0.5


# ------------------------------------------------------------------------------------ warp.autograd.gradcheck
@wp.kernel
def stretch_functions(F: wp.array(dtype=wp.mat33), sqrt_b: wp.array(dtype=wp.mat33), log_b: wp.array(dtype=wp.mat33)):
    """sqrt and log of b = F F^T: F's perturbations keep b symmetric, as in the stress."""
    p = wp.tid()
    b = F[p] @ wp.transpose(F[p])
    sqrt_b[p] = sym_sqrt(b)
    log_b[p] = sym_log(b)


@wp.kernel
def elastic_stress(F: wp.array(dtype=wp.mat33), material: wp.array(dtype=wp.int32), mu: wp.array(dtype=float),
                   lam: wp.array(dtype=float), tau: wp.array(dtype=wp.mat33)):
    p = wp.tid()
    tau[p] = kirchhoff_stress(F[p], material[p], 1.0, mu[p], lam[p], 0.0)


def deformation_gradients() -> np.ndarray:
    """The rest state F = I (all stretches equal: where an SVD adjoint is singular), a pure rotation, an
    axisymmetric stretch (two equal stretches) and random stretches up to 20% with rotations."""
    rng = np.random.default_rng(7)
    rotation, turn = random_rotations(rng, 2)
    special = np.stack([np.eye(3), rotation, turn @ np.diag([1.1, 0.95, 0.95])])
    stretch = np.exp(rng.uniform(-0.2, 0.2, (5, 3)))
    general = random_rotations(rng, 5) @ (np.eye(3) * stretch[:, None, :]) @ random_rotations(rng, 5)
    return np.concatenate([special, general]).astype(np.float32)


def gradcheck(kernel, inputs, outputs) -> bool:
    init_warp("cpu")
    # float32 central differences: eps 1e-3 keeps the rounding error (~1e-7 / eps) under the tolerance.
    return warp.autograd.gradcheck(kernel, dim=len(inputs[0]), inputs=inputs, outputs=outputs, eps=1e-3, atol=2e-3,
                                   rtol=1e-2, raise_exception=False, show_summary=False, device="cpu")


def test_custom_adjoints_of_sqrt_and_log_pass_warps_gradcheck():
    F = deformation_gradients()
    n = len(F)
    inputs = [wp.array(F, dtype=wp.mat33, requires_grad=True)]
    outputs = [wp.zeros(n, dtype=wp.mat33, requires_grad=True) for _ in range(2)]
    assert gradcheck(stretch_functions, inputs, outputs)


@pytest.mark.parametrize("model", MODELS[:3], ids=[m.name.lower() for m in MODELS[:3]])
def test_elastic_stress_passes_warps_gradcheck(model):
    F = deformation_gradients()
    n = len(F)
    rng = np.random.default_rng(int(model))
    inputs = [wp.array(F, dtype=wp.mat33, requires_grad=True),
              wp.array(np.full(n, int(model), np.int32), dtype=wp.int32),
              wp.array(rng.uniform(0.5, 1.5, n).astype(np.float32), dtype=float, requires_grad=True),
              wp.array(rng.uniform(0.5, 1.5, n).astype(np.float32), dtype=float, requires_grad=True)]
    assert gradcheck(elastic_stress, inputs, [wp.zeros(n, dtype=wp.mat33, requires_grad=True)])


DT_PROJECTION = 1.0e-3  # s (foam's viscous step)


@wp.kernel
def plastic_projection(F: wp.array(dtype=wp.mat33), material: wp.array(dtype=wp.int32), plastic: wp.array(dtype=float),
                       mu: wp.array(dtype=float), lam: wp.array(dtype=float), pp: PlasticParams,
                       F_out: wp.array(dtype=wp.mat33), plastic_out: wp.array(dtype=float)):
    p = wp.tid()
    f, pl = return_mapping(F[p], material[p], plastic[p], mu[p], lam[p], pp, DT_PROJECTION)
    F_out[p] = f
    plastic_out[p] = pl


@pytest.mark.parametrize("model", MODELS[3:], ids=[m.name.lower() for m in MODELS[3:]])
def test_return_mapping_passes_warps_gradcheck(model):
    """Through warp's SVD adjoint, at trial F that each plastic model mostly projects (distinct stretches; sand
    leaves some compressed F inside its cone)."""
    init_warp("cpu")
    rng = np.random.default_rng(int(model))
    F = deformation_gradients()[3:]
    n = len(F)
    # Moduli ~1 Pa and a yield stress of 0.02 Pa (a yield strain ~1%): the random stretches yield.
    cfg = SimConfig(**CFG, plasticity=Plasticity(**{**PLASTICITY, "yield_stress": 0.02}))
    pp = SimCore(cfg, GridMapping.build(cfg, np.full((1, 3), 0.5)), np.zeros(1, np.int32), np.zeros(1), "cpu").pp
    material, plastic = np.full(n, int(model)), np.full(n, 1.0 if model == MaterialModel.SNOW else 0.01)
    mu, lam = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, n)
    F_ref, _ = ref.return_mapping(ref.tensor(F), torch.as_tensor(material), ref.tensor(plastic), ref.tensor(mu),
                                  ref.tensor(lam), cfg.plasticity, DT_PROJECTION)
    assert (np.abs(F_ref.numpy() - F).max(axis=(1, 2)) > 1e-3).mean() >= 0.5, "most trial F should project"

    def arr(a, dtype=float):
        return wp.array(np.asarray(a, np.float32), dtype=dtype, requires_grad=True)

    inputs = [arr(F, wp.mat33), wp.array(material.astype(np.int32), dtype=wp.int32), arr(plastic), arr(mu), arr(lam),
              pp]
    outputs = [wp.zeros(n, dtype=wp.mat33, requires_grad=True), wp.zeros(n, dtype=float, requires_grad=True)]
    assert gradcheck(plastic_projection, inputs, outputs)
