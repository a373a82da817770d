"""The ModelScope text-to-video prior on a tiny real UNet3D loaded from a saved folder."""
import math

import pytest
import torch

from backend.prior import PriorConfigError, load_prior

from .conftest import smooth_video


def test_loss_finite_with_gradients(modelscope_prior):
    video = smooth_video(4).requires_grad_()
    loss, info = modelscope_prior.loss(video, step=0, total_steps=5, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert torch.isfinite(video.grad).all() and video.grad.abs().sum() > 0
    assert info["timestep"] == round(info["t"] * 999)


def test_cfg_unconditional_branch_uses_the_negative_prompt(modelscope_prior):
    seen = []
    handle = modelscope_prior.unet.register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0].clone(), a[1].clone(), kw["encoder_hidden_states"].clone())),
        with_kwargs=True)
    noisy = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    level = modelscope_prior.noise_level(0.5)
    try:
        mixed = modelscope_prior.predict_eps(noisy, level, guidance_scale=4.0)
    finally:
        handle.remove()
    sample, timestep, ehs = seen[-1]
    assert level.timestep == round(0.5 * 999)
    assert torch.equal(timestep, torch.full((2,), int(level.timestep)))  # the integer DDPM index
    assert torch.allclose(ehs[0], modelscope_prior._embed("static")[0])
    assert torch.allclose(ehs[1], modelscope_prior._embed("the flower sways")[0])
    with torch.no_grad():
        out = modelscope_prior.unet(sample, timestep, encoder_hidden_states=ehs).sample
    assert torch.allclose(mixed[0], out[0] + 4.0 * (out[1] - out[0]), atol=1e-4)


def test_text_prior_without_prompt_is_refused(tiny_modelscope_dir):
    # A job without a prompt is refused by the job schema before anything loads (tests/foundation);
    # a library caller gets the prior's own error.
    with pytest.raises(PriorConfigError, match="needs a prompt"):
        load_prior("modelscope", tiny_modelscope_dir)
    with pytest.raises(PriorConfigError, match="needs a prompt"):
        load_prior("modelscope", tiny_modelscope_dir, prompt="   ")
