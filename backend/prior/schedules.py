"""Noise schedules: EDM preconditioning (SVD) and discrete VP / DDPM levels (ModelScope, analytic)."""
from __future__ import annotations

import math

import torch

from .guidance import NoiseLevel


def edm_coefficients(sigma: float) -> tuple[float, float, float, float]:
    """(c_in, c_skip, c_out, c_noise) of EDM preconditioning for a v-prediction network (SVD):

    D(x) = c_skip * x + c_out * F(c_in * x; c_noise), with
    c_in = 1/sqrt(sigma^2+1), c_skip = 1/(sigma^2+1), c_out = -sigma/sqrt(sigma^2+1), c_noise = ln(sigma)/4.
    """
    s2 = sigma * sigma + 1.0
    return 1.0 / math.sqrt(s2), 1.0 / s2, -sigma / math.sqrt(s2), 0.25 * math.log(sigma)


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """EDM sigma of every discrete VP level: sqrt((1 - alpha_bar) / alpha_bar) (increasing)."""
    ab = alphas_cumprod.double()
    return ((1.0 - ab) / ab).sqrt()


def discrete_vp_level(alphas_cumprod: torch.Tensor, t: float) -> NoiseLevel:
    """The DDPM level nearest to schedule position t in [0,1]; timestep = the integer index."""
    n = alphas_cumprod.numel()
    index = int(round(min(max(t, 0.0), 1.0) * (n - 1)))
    ab = float(alphas_cumprod[index])
    return NoiseLevel(t=index / (n - 1), alpha_bar=ab, sigma=math.sqrt((1.0 - ab) / ab), timestep=float(index))


def sigma_at(log_sigmas: torch.Tensor, t: float) -> float:
    """EDM sigma at schedule position t: log-linear interpolation of the discrete VP sigmas."""
    pos = min(max(t, 0.0), 1.0) * (log_sigmas.numel() - 1)
    i = min(int(math.floor(pos)), log_sigmas.numel() - 2)
    frac = pos - i
    return math.exp(float(log_sigmas[i]) * (1.0 - frac) + float(log_sigmas[i + 1]) * frac)


def t_at_sigma(log_sigmas: torch.Tensor, sigma: float) -> float:
    """Inverse of sigma_at (log_sigmas increasing)."""
    ls = math.log(sigma)
    n = log_sigmas.numel()
    if ls <= float(log_sigmas[0]):
        return 0.0
    if ls >= float(log_sigmas[-1]):
        return 1.0
    i = int(torch.searchsorted(log_sigmas, torch.tensor(ls, dtype=log_sigmas.dtype))) - 1
    lo, hi = float(log_sigmas[i]), float(log_sigmas[i + 1])
    return (i + (ls - lo) / (hi - lo)) / (n - 1)


def edm_level(log_sigmas: torch.Tensor, t: float) -> NoiseLevel:
    sigma = sigma_at(log_sigmas, t)
    return NoiseLevel(t=t, alpha_bar=1.0 / (1.0 + sigma * sigma), sigma=sigma, timestep=0.25 * math.log(sigma))
