"""Shared loss code: gradient injection, SDS-T / MDS against closed forms (analytic prior), annealing."""
import math

import pytest
import torch

from backend.prior import PriorConfigError
from backend.prior.analytic import AnalyticPrior
from backend.prior.guidance import inject_gradient


def test_injected_gradient_equals_score():
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(1, 4, 3, 8, 8, generator=g, requires_grad=True)
    s = torch.randn(1, 4, 3, 8, 8, generator=g)
    loss = inject_gradient(lat, s, "sum")
    assert math.isclose(float(loss.detach()), 0.5 * float(s.square().sum()), rel_tol=1e-5)
    loss.backward()
    assert torch.allclose(lat.grad, s, atol=1e-6)
    lat.grad = None
    inject_gradient(lat, s, "mean").backward()
    assert torch.allclose(lat.grad, s / s.numel(), atol=1e-9)


def _videos(frames=4):
    g = torch.Generator().manual_seed(3)
    target = torch.rand(frames, 3, 8, 8, generator=g)
    video = torch.rand(frames, 3, 8, 8, generator=g)
    return target, video


def test_sds_on_analytic_prior_pulls_towards_the_target():
    target, video = _videos()
    prior = AnalyticPrior(target, loss_type="sds")
    v = video.clone().requires_grad_()
    loss, info = prior.loss(v, step=0, total_steps=1, generator=torch.Generator().manual_seed(0))
    loss.backward()
    ab = info["alpha_bar"]
    expected = (1 - ab) * math.sqrt(ab) / math.sqrt(1 - ab) * (video - target)
    assert torch.allclose(v.grad, expected, atol=1e-5)


def test_mds_is_the_difference_of_predictions_with_shared_noise_and_t():
    target, video = _videos()
    prior = AnalyticPrior(target, loss_type="mds")
    lat = prior.encode(video).detach().requires_grad_()
    static = prior.static_latents(video)
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(5))
    loss, info = prior.loss_from_latents(lat, static, t=0.4, noise=noise)
    loss.backward()
    level = prior.noise_level(0.4)
    eps_v = prior.predict_eps(prior.add_noise(lat.detach(), level, noise), level)
    eps_0 = prior.predict_eps(prior.add_noise(static, level, noise), level)
    s = (1 - level.alpha_bar) * (eps_v - eps_0)
    assert torch.allclose(lat.grad, s, atol=1e-6)
    # For a point-mass prior the target cancels: s = w sqrt(ab)/sqrt(1-ab) (V - V0).
    ab = level.alpha_bar
    closed = (1 - ab) * math.sqrt(ab / (1 - ab)) * (video - video[:1]).unsqueeze(0)
    assert torch.allclose(lat.grad, closed, atol=1e-5)
    assert info["t"] == pytest.approx(level.t) and info["loss_type"] == "mds"


def test_timestep_range_and_annealing():
    target, _ = _videos()
    prior = AnalyticPrior(target, t_range=(0.02, 0.98), anneal_to=0.5)
    assert prior.t_bounds(0, 11) == (0.02, 0.98)
    assert prior.t_bounds(5, 11) == pytest.approx((0.02, 0.74))
    assert prior.t_bounds(10, 11) == pytest.approx((0.02, 0.5))
    g = torch.Generator().manual_seed(0)
    ts = [prior.sample_t(10, 11, g) for _ in range(200)]
    assert min(ts) >= 0.02 and max(ts) <= 0.5
    assert prior.weight(prior.noise_level(0.5)) == pytest.approx(1 - prior.noise_level(0.5).alpha_bar)


def test_bad_settings():
    target, video = _videos()
    with pytest.raises(PriorConfigError, match="loss_type"):
        AnalyticPrior(target, loss_type="vsd")
    with pytest.raises(PriorConfigError, match="t_range"):
        AnalyticPrior(target, t_range=(0.9, 0.1))
    with pytest.raises(PriorConfigError, match="does not match"):
        AnalyticPrior(target).loss(video[:2])
