"""EDM preconditioning of the SVD prior against the closed form and against diffusers' scheduler."""
import math

import torch

from backend.prior.schedules import edm_coefficients, edm_level, t_at_sigma, vp_sigmas
from support.tiny_models import TINY_SVD_SCHEDULER


def test_coefficients_closed_form():
    for sigma in (0.002, 0.1, 1.0, 3.7, 80.0, 700.0):
        c_in, c_skip, c_out, c_noise = edm_coefficients(sigma)
        assert math.isclose(c_in, 1 / math.sqrt(sigma ** 2 + 1), rel_tol=1e-12)
        assert math.isclose(c_skip, 1 / (sigma ** 2 + 1), rel_tol=1e-12)
        assert math.isclose(c_out, -sigma / math.sqrt(sigma ** 2 + 1), rel_tol=1e-12)
        assert math.isclose(c_noise, 0.25 * math.log(sigma), rel_tol=1e-12)
        # v-prediction consistency: with F = the true v, D recovers the clean sample.
        x0, eps = 0.7, -1.3
        x = x0 + sigma * eps
        v = (eps - sigma * x0) / math.sqrt(sigma ** 2 + 1)  # VP v-target: alpha * eps - sigma_vp * x0
        assert math.isclose(c_skip * x + c_out * v, x0, rel_tol=1e-9, abs_tol=1e-9)


def test_matches_diffusers_euler_scheduler():
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(**TINY_SVD_SCHEDULER)
    assert sched.config.prediction_type == "v_prediction"
    sched.set_timesteps(6)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 4, 8, 8, generator=g)
    f = torch.randn(1, 2, 4, 8, 8, generator=g)
    for i, t in enumerate(sched.timesteps):
        sigma = float(sched.sigmas[i])
        c_in, c_skip, c_out, c_noise = edm_coefficients(sigma)
        assert math.isclose(float(t), c_noise, rel_tol=1e-5, abs_tol=1e-6)
        assert torch.allclose(sched.scale_model_input(x, t), c_in * x, rtol=1e-5, atol=1e-6)
        out = sched.step(f, t, x)
        assert torch.allclose(out.pred_original_sample, c_skip * x + c_out * f, rtol=1e-4, atol=1e-5)


def test_schedule_levels_and_inverse():
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler(**TINY_SVD_SCHEDULER)
    log_sigmas = vp_sigmas(sched.alphas_cumprod).log()
    for t in (0.0, 0.02, 0.5, 0.98, 1.0):
        level = edm_level(log_sigmas, t)
        assert math.isclose(level.alpha_bar, 1 / (1 + level.sigma ** 2))
        assert math.isclose(level.timestep, 0.25 * math.log(level.sigma))
        assert abs(t_at_sigma(log_sigmas, level.sigma) - t) < 1e-6
    # t on the training grid gives exactly that level's sigma.
    ab = sched.alphas_cumprod[500].double()
    assert math.isclose(edm_level(log_sigmas, 500 / 999).sigma, float(((1 - ab) / ab).sqrt()), rel_tol=1e-9)
