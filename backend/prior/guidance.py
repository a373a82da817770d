"""The loss code every video prior shares: timestep sampling, SDS-T / MDS scores, gradient injection.

A prior only has to say how to encode a video, how to noise latents at a schedule position t in
[0, 1], and how to predict the noise (with classifier-free guidance). `VideoPrior.loss` does the
rest, identically for SVD, ModelScope and the analytic prior:

    SDS-T: s = w(t) * (eps_hat(V_t) - eps)
    MDS:   s = w(t) * (eps_hat(V_t) - eps_hat(V0_t)),  V0 = the first frame repeated,
           V_t and V0_t noised with the SAME eps and t (so appearance cancels, motion remains)

with w(t) = 1 - alpha_bar(t) (= sigma^2 / (1 + sigma^2) for EDM). The score enters through
target = (latents - s).detach(), loss = 0.5 * ||latents - target||^2; with reduction="sum"
(the default) d loss / d latents = s exactly; "mean" divides it by the latent count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import PriorConfigError

LOSS_TYPES = ("mds", "sds")
WEIGHTINGS = ("1-alpha_bar", "uniform")


@dataclass(frozen=True)
class NoiseLevel:
    """One noise level, in all the conventions the priors need."""

    t: float          # position in the sampled schedule, in [0, 1]
    alpha_bar: float  # VP signal fraction; EDM: 1 / (1 + sigma^2)
    sigma: float      # EDM noise std, sqrt((1 - alpha_bar) / alpha_bar)
    timestep: float   # what the network takes as its time input (DDPM index, or c_noise for EDM)


def rand_uniform(generator: torch.Generator | None) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((), generator=generator, device=device))


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Gaussian noise like x (float32) from `generator`, whatever device the generator lives on."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device)


def inject_gradient(latents: torch.Tensor, score: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """A loss whose gradient wrt `latents` is `score` (sum) or score / numel (mean)."""
    lat = latents.float()
    target = (lat - score.float()).detach()
    sq = (lat - target).square()
    return 0.5 * (sq.sum() if reduction == "sum" else sq.mean())


def cfg_combine(network, model_in: torch.Tensor, scale: float, max_batch: int) -> torch.Tensor:
    """uncond + scale * (cond - uncond) of network(x, conditioned_flags), evaluated in batches.

    scale == 1 needs only the conditional pass and scale == 0 only the unconditional one.
    """
    branches = [False, True] if scale not in (0.0, 1.0) else [scale == 1.0]
    items = [(i, c) for i in range(model_in.shape[0]) for c in branches]
    outs = {}
    for start in range(0, len(items), max(1, max_batch)):
        chunk = items[start:start + max(1, max_batch)]
        x = torch.stack([model_in[i] for i, _ in chunk])
        flags = torch.tensor([c for _, c in chunk])
        y = network(x, flags)
        for k, key in enumerate(chunk):
            outs[key] = y[k]
    if len(branches) == 1:
        return torch.stack([outs[(i, branches[0])] for i in range(model_in.shape[0])])
    uncond = torch.stack([outs[(i, False)] for i in range(model_in.shape[0])])
    cond = torch.stack([outs[(i, True)] for i in range(model_in.shape[0])])
    return uncond + scale * (cond - uncond)


class VideoPrior:
    """Base class. Subclasses implement encode, static_latents, noise_level, add_noise, predict_eps."""

    kind = "base"
    default_guidance_scale = 1.0
    default_loss_type = "mds"

    def __init__(self, loss_type=None, guidance_scale=None, t_range=(0.02, 0.98), anneal_to=None,
                 weighting="1-alpha_bar", reduction="sum", device="cpu", dtype=torch.float32):
        loss_type = loss_type or self.default_loss_type
        if loss_type not in LOSS_TYPES:
            raise PriorConfigError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
        if weighting not in WEIGHTINGS:
            raise PriorConfigError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if reduction not in ("sum", "mean"):
            raise PriorConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        lo, hi = (float(v) for v in t_range)
        if not 0.0 <= lo < hi <= 1.0:
            raise PriorConfigError(f"t_range must satisfy 0 <= low < high <= 1, got {t_range}")
        if anneal_to is not None and not lo <= float(anneal_to) <= hi:
            raise PriorConfigError(f"anneal_to must lie inside t_range {t_range}, got {anneal_to}")
        self.loss_type = loss_type
        self.guidance_scale = float(self.default_guidance_scale if guidance_scale is None else guidance_scale)
        self.t_range = (lo, hi)
        self.anneal_to = None if anneal_to is None else float(anneal_to)
        self.weighting = weighting
        self.reduction = reduction
        self.device = torch.device(device)
        self.dtype = dtype

    # -- to implement ---------------------------------------------------------------------------
    def encode(self, video: torch.Tensor, generator=None) -> torch.Tensor:
        """(T,3,H,W) in [0,1] -> latents (1, ...), differentiable."""
        raise NotImplementedError

    def static_latents(self, video: torch.Tensor) -> torch.Tensor:
        """Latents of the first frame repeated over the clip, without gradient."""
        raise NotImplementedError

    def noise_level(self, t: float) -> NoiseLevel:
        raise NotImplementedError

    def add_noise(self, latents: torch.Tensor, level: NoiseLevel, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def predict_eps(self, noisy: torch.Tensor, level: NoiseLevel, guidance_scale=None) -> torch.Tensor:
        """eps_hat for a batch of noisy latents (B, ...), float32, no gradient, with CFG."""
        raise NotImplementedError

    def prepare(self, cond_image=None, prompt=None, negative_prompt=None, generator=None):
        """Cache the conditioning once per run (no-op for unconditioned priors)."""

    # -- shared ---------------------------------------------------------------------------------
    @property
    def unet_dtype(self):
        """Dtype of the latent priors' UNet (they run it in fp16 on CUDA)."""
        return next(self.unet.parameters()).dtype

    @property
    def vae_dtype(self):
        """The VAE may stay fp32 while the UNet is fp16 (see loader._vae_dtype)."""
        return next(self.vae.parameters()).dtype

    def t_bounds(self, step: int, total_steps: int) -> tuple[float, float]:
        """[low, high] at this step; the high end moves linearly to `anneal_to` over the run."""
        lo, hi = self.t_range
        if self.anneal_to is not None and total_steps > 1:
            frac = min(max(step / (total_steps - 1), 0.0), 1.0)
            hi = hi + (self.anneal_to - hi) * frac
        return lo, max(hi, lo)

    def sample_t(self, step: int, total_steps: int, generator=None) -> float:
        lo, hi = self.t_bounds(step, total_steps)
        return lo + (hi - lo) * rand_uniform(generator)

    def weight(self, level: NoiseLevel) -> float:
        return 1.0 - level.alpha_bar if self.weighting == "1-alpha_bar" else 1.0

    def score(self, latents, static, level: NoiseLevel, noise: torch.Tensor) -> torch.Tensor:
        """s for the configured loss type (float32, detached). `static` is needed for MDS only."""
        lat = latents.detach()
        w = self.weight(level)
        if self.loss_type == "sds":
            eps_hat = self.predict_eps(self.add_noise(lat, level, noise), level)
            return w * (eps_hat - noise)
        noisy = torch.cat([self.add_noise(lat, level, noise), self.add_noise(static, level, noise)])
        eps_hat, eps_hat_static = self.predict_eps(noisy, level).chunk(2)
        return w * (eps_hat - eps_hat_static)

    def loss_from_latents(self, latents, static=None, step=0, total_steps=1, generator=None,
                          t: float | None = None, noise: torch.Tensor | None = None):
        """(loss, info) for given latents; t and noise may be fixed (tests, reproducibility)."""
        if self.loss_type == "mds" and static is None:
            raise PriorConfigError("MDS needs the static (first-frame) latents")
        t = self.sample_t(step, total_steps, generator) if t is None else float(t)
        level = self.noise_level(t)
        noise = randn_like(latents, generator) if noise is None else noise.to(latents.device, torch.float32)
        s = self.score(latents, static, level, noise)
        loss = inject_gradient(latents, s, self.reduction)
        info = {"loss_type": self.loss_type, "t": level.t, "sigma": level.sigma, "alpha_bar": level.alpha_bar,
                "timestep": level.timestep, "weight": self.weight(level), "guidance_scale": self.guidance_scale,
                "score_rms": float(s.square().mean().sqrt()), "loss": float(loss.detach())}
        if not math.isfinite(info["score_rms"]):
            raise FloatingPointError(f"the {self.kind} prior produced a non-finite score at t={t:.3f}")
        return loss, info

    def loss(self, video: torch.Tensor, step: int = 0, total_steps: int = 1, generator=None):
        """The prior's loss for a rendered video (T,3,H,W) in [0,1]; backward() sends s into the video."""
        self.check_video(video)
        latents = self.encode(video, generator=generator)
        static = self.static_latents(video) if self.loss_type == "mds" else None
        return self.loss_from_latents(latents, static, step, total_steps, generator)

    def check_video(self, video: torch.Tensor):
        if not torch.is_tensor(video) or video.ndim != 4 or video.shape[1] != 3:
            shape = tuple(video.shape) if torch.is_tensor(video) else type(video).__name__
            raise PriorConfigError(f"the video must be a (T,3,H,W) tensor in [0,1], got {shape}")
        if video.shape[0] < 2:
            raise PriorConfigError("the video needs at least 2 frames")
