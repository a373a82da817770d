"""A closed-form prior for tests and the demo: the data distribution is one target video x*.

In pixel space with VP noising x_t = sqrt(ab) x* + sqrt(1 - ab) eps, the optimal denoiser's noise
estimate is eps_hat(x_t) = (x_t - sqrt(ab) x*) / sqrt(1 - ab). It runs through the same
VideoPrior.loss code as the diffusion models. There is no conditioning, so CFG has no effect.

Note: SDS-T gives s = w sqrt(ab)/sqrt(1-ab) (V - x*), which pulls the video to the target; MDS
gives s = w sqrt(ab)/sqrt(1-ab) (V - V0), in which x* cancels (a point-mass prior has no motion
model), so the default loss here is SDS-T.
"""
from __future__ import annotations

import math

import torch

from .errors import PriorConfigError
from .guidance import VideoPrior
from .schedules import discrete_vp_level


def linear_alphas_cumprod(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """DDPM's linear beta schedule."""
    return torch.cumprod(1.0 - torch.linspace(beta_start, beta_end, n, dtype=torch.float64), 0)


class AnalyticPrior(VideoPrior):
    kind = "analytic"
    default_loss_type = "sds"

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor | None = None, **base):
        super().__init__(**base)
        target = torch.as_tensor(target).detach().float()
        if target.ndim != 4 or target.shape[1] != 3:
            raise PriorConfigError(f"the analytic prior's target must be (T,3,H,W), got {tuple(target.shape)}")
        self.target = target.to(self.device).unsqueeze(0)
        self.alphas_cumprod = (linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).double()

    def check_video(self, video):
        super().check_video(video)
        if tuple(video.shape) != tuple(self.target.shape[1:]):
            raise PriorConfigError(f"the video {tuple(video.shape)} does not match the analytic prior's target "
                                   f"{tuple(self.target.shape[1:])}")

    def encode(self, video, generator=None):
        return video.to(self.device).float().unsqueeze(0)

    @torch.no_grad()
    def static_latents(self, video):
        return video[:1].detach().to(self.device).float().expand_as(video).unsqueeze(0)

    def noise_level(self, t):
        return discrete_vp_level(self.alphas_cumprod, t)

    def add_noise(self, latents, level, noise):
        return math.sqrt(level.alpha_bar) * latents.float() + math.sqrt(1.0 - level.alpha_bar) * noise

    @torch.no_grad()
    def predict_eps(self, noisy, level, guidance_scale=None):
        return (noisy.float() - math.sqrt(level.alpha_bar) * self.target) / math.sqrt(1.0 - level.alpha_bar)
