"""The SVD prior on a tiny real UNet (saved and loaded like real weights): CFG, unconditional
branch, EDM inputs, MDS, and a full loss with gradients."""
import math

import pytest
import torch

from backend.prior.schedules import edm_coefficients

from .conftest import smooth_video


class UNetSpy:
    """Records the tiny UNet's real forward inputs."""

    def __init__(self, unet):
        self.calls = []
        self.handle = unet.register_forward_pre_hook(self.hook, with_kwargs=True)

    def hook(self, module, args, kwargs):
        self.calls.append({"sample": args[0].detach().clone(), "timestep": args[1].detach().clone(),
                           "encoder_hidden_states": kwargs["encoder_hidden_states"].detach().clone(),
                           "added_time_ids": kwargs["added_time_ids"].detach().clone()})

    def close(self):
        self.handle.remove()


def test_cfg_mixes_branches_and_uncond_gets_zero_image_conditioning(svd_prior):
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 4, 4, 32, 32, generator=g) * 2.0
    level = svd_prior.noise_level(0.5)
    spy = UNetSpy(svd_prior.unet)
    try:
        eps_mix = svd_prior.predict_eps(noisy, level, guidance_scale=7.5)
        batched = spy.calls[-1]
        eps_uncond = svd_prior.predict_eps(noisy, level, guidance_scale=0.0)
        eps_cond = svd_prior.predict_eps(noisy, level, guidance_scale=1.0)
    finally:
        spy.close()
    assert torch.allclose(eps_mix, eps_uncond + 7.5 * (eps_cond - eps_uncond), atol=1e-4)
    assert not torch.allclose(eps_cond, eps_uncond, atol=1e-4)  # the conditioning matters

    # One batched call: item 0 is the unconditional branch, item 1 the conditional one.
    sample, ehs = batched["sample"], batched["encoder_hidden_states"]
    assert sample.shape == (2, 4, 8, 32, 32) and ehs.shape[0] == 2
    assert torch.count_nonzero(sample[0, :, 4:]) == 0 and torch.count_nonzero(ehs[0]) == 0
    assert torch.count_nonzero(sample[1, :, 4:]) > 0 and torch.count_nonzero(ehs[1]) > 0
    cond_lat = svd_prior.cond_latents(64, 64)
    assert torch.allclose(sample[1, :, 4:], cond_lat.expand(4, -1, -1, -1))
    assert torch.allclose(ehs[1], svd_prior.image_embeds[0])
    # Both branches get the same noisy input c_in * x, time c_noise and time ids [fps-1, motion, aug].
    c_in, _, _, c_noise = edm_coefficients(level.sigma)
    assert torch.allclose(sample[0, :, :4], c_in * noisy[0]) and torch.allclose(sample[1, :, :4], c_in * noisy[0])
    assert torch.allclose(batched["timestep"], torch.full((2,), c_noise))
    assert batched["added_time_ids"][0].tolist() == pytest.approx([6.0, 127.0, 0.02])


def test_eps_hat_is_edm_denoiser_of_the_unet(svd_prior):
    g = torch.Generator().manual_seed(1)
    noisy = torch.randn(1, 4, 4, 32, 32, generator=g)
    level = svd_prior.noise_level(0.3)
    c_in, c_skip, c_out, c_noise = edm_coefficients(level.sigma)
    eps = svd_prior.predict_eps(noisy, level, guidance_scale=1.0)
    with torch.no_grad():
        cond = svd_prior.cond_latents(64, 64).unsqueeze(1).expand(1, 4, -1, -1, -1)
        f = svd_prior.unet(torch.cat([c_in * noisy, cond], 2), torch.tensor([c_noise]),
                           encoder_hidden_states=svd_prior.image_embeds,
                           added_time_ids=torch.tensor([[6.0, 127.0, 0.02]])).sample
    denoised = c_skip * noisy + c_out * f
    assert torch.allclose(eps, (noisy - denoised) / level.sigma, atol=1e-4)


def test_mds_score_uses_shared_noise_and_timestep(svd_prior):
    video = smooth_video(4)
    lat = svd_prior.encode(video).detach().requires_grad_()
    static = svd_prior.static_latents(video)
    assert torch.allclose(static[0, 0], lat[0, 0].detach(), atol=1e-5)  # V0 = the first frame, repeated
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(2))
    loss, info = svd_prior.loss_from_latents(lat, static, t=0.6, noise=noise)
    loss.backward()
    level = svd_prior.noise_level(0.6)
    eps_v = svd_prior.predict_eps(lat.detach() + level.sigma * noise, level)
    eps_0 = svd_prior.predict_eps(static + level.sigma * noise, level)
    w = level.sigma ** 2 / (1 + level.sigma ** 2)
    assert info["weight"] == pytest.approx(w)
    assert torch.allclose(lat.grad, w * (eps_v - eps_0), atol=1e-4)


def test_full_loss_gives_finite_gradients_on_the_video(svd_prior):
    video = smooth_video(4).requires_grad_()
    loss, info = svd_prior.loss(video, step=3, total_steps=10, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(float(loss.detach())) and math.isfinite(info["score_rms"])
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    assert 0.02 <= info["t"] <= 0.98


def test_lognormal_sigma_sampling_stays_in_range(svd_prior):
    p = svd_prior
    p.sigma_sampling = "lognormal"
    try:
        g = torch.Generator().manual_seed(0)
        ts = [p.sample_t(0, 1, g) for _ in range(300)]
    finally:
        p.sigma_sampling = "schedule"
    assert min(ts) >= 0.02 and max(ts) <= 0.98
    sig = torch.tensor([math.log(p.noise_level(t).sigma) for t in ts])
    assert abs(float(sig.median()) - 0.7) < 0.4  # SVD's training log-normal median, ln sigma = 0.7
