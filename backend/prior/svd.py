"""Stable Video Diffusion (img2vid / img2vid-xt) as a video prior, with correct EDM guidance.

The network F is a v-prediction UNet under EDM preconditioning (diffusers' EulerDiscreteScheduler
for SVD: prediction_type "v_prediction", timestep_type "continuous"):

    x = z + sigma * eps,  D(x) = c_skip x + c_out F(c_in x; c_noise),  eps_hat = (x - D) / sigma

Noise levels: a schedule position t in [t_lo, t_hi] maps to sigma by log-linear interpolation of
the scheduler's training sigmas sqrt((1 - alpha_bar)/alpha_bar) (scaled-linear betas: sigma from
about 0.03 to 14.6), so t means the same as for the DDPM priors and w = 1 - alpha_bar =
sigma^2/(1 + sigma^2). sigma_sampling="schedule" (default) draws t uniformly; "lognormal" draws
ln sigma ~ N(P_mean, P_std) (SVD's training distribution) truncated to [sigma(t_lo), sigma(t_hi)].

Conditioning, as the diffusers pipeline builds it: the CLIP image embedding of the first frame,
the VAE latent (posterior mode, not scaled) of the first frame plus noise_aug_strength noise,
concatenated to every frame's latents, and added time ids [fps - 1, motion_bucket_id,
noise_aug_strength]. The unconditional branch gets zeros for both the embedding and the latents.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import protocol
from .errors import PriorConfigError
from .guidance import NoiseLevel, VideoPrior, cfg_combine, rand_uniform, randn_like
from .schedules import edm_coefficients, edm_level, t_at_sigma, vp_sigmas
from .vae_io import check_size, encode_frames, pick_grad_frames, resize_frames

SIGMA_SAMPLINGS = ("schedule", "lognormal")


class SVDPrior(VideoPrior):
    kind = "svd"
    default_guidance_scale = 3.0

    def __init__(self, unet, vae, image_encoder, scheduler, image_mean, image_std, *, fps=protocol.PRIOR_FPS["svd"],
                 motion_bucket_id=127,
                 noise_aug_strength=0.02, sigma_sampling="schedule", P_mean=0.7, P_std=1.6, resolution=None,
                 vae_chunk=8, grad_frames=None, max_batch=4, **base):
        super().__init__(**base)
        if sigma_sampling not in SIGMA_SAMPLINGS:
            raise PriorConfigError(f"sigma_sampling must be one of {SIGMA_SAMPLINGS}, got {sigma_sampling!r}")
        pred = scheduler.config.get("prediction_type", "v_prediction")
        if pred != "v_prediction":
            raise PriorConfigError(f"this SVD scheduler predicts {pred!r}; the SVD prior expects v_prediction")
        self.unet, self.vae, self.image_encoder, self.scheduler = unet, vae, image_encoder, scheduler
        self.image_mean = torch.tensor(image_mean, dtype=torch.float32).view(3, 1, 1)
        self.image_std = torch.tensor(image_std, dtype=torch.float32).view(3, 1, 1)
        self.fps, self.motion_bucket_id = float(fps), float(motion_bucket_id)
        self.noise_aug_strength = float(noise_aug_strength)
        self.sigma_sampling, self.P_mean, self.P_std = sigma_sampling, float(P_mean), float(P_std)
        self.resolution = None if resolution is None else tuple(int(v) for v in resolution)
        self.vae_chunk, self.grad_frames, self.max_batch = int(vae_chunk), grad_frames, int(max_batch)
        self.log_sigmas = vp_sigmas(scheduler.alphas_cumprod).log()
        self.size_multiple = self.vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
        self.preferred_frames = int(unet.config.num_frames)
        expected = unet.add_embedding.linear_1.in_features
        if unet.config.addition_time_embed_dim * 3 != expected:
            raise PriorConfigError(f"this UNet takes {expected} added-time features, not 3 time ids")
        self.cond_image = None
        self.image_embeds = None
        self._cond_latents = {}
        self._cond_generator = None

    # -- conditioning ---------------------------------------------------------------------------
    @torch.no_grad()
    def prepare(self, cond_image=None, prompt=None, negative_prompt=None, generator=None):
        """Cache the image conditioning from the first rendered frame (3,H,W) in [0,1]."""
        if cond_image is None:
            raise PriorConfigError("Stable Video Diffusion needs a conditioning image (the first rendered frame)")
        img = torch.as_tensor(cond_image).detach().float()
        if img.ndim != 3 or img.shape[0] != 3:
            raise PriorConfigError(f"the conditioning image must be (3,H,W) in [0,1], got {tuple(img.shape)}")
        self.cond_image = img.clamp(0, 1).to(self.device)
        self._cond_generator = generator
        self._cond_latents = {}
        size = self.image_encoder.config.image_size
        pix = F.interpolate((self.cond_image * 2 - 1)[None], size=(size, size), mode="bicubic", antialias=True,
                            align_corners=False)
        pix = (((pix + 1) / 2).clamp(0, 1) - self.image_mean.to(pix.device)) / self.image_std.to(pix.device)
        emb = self.image_encoder(pix.to(next(self.image_encoder.parameters()).dtype)).image_embeds
        self.image_embeds = emb.unsqueeze(1).to(self.unet_dtype)  # (1, 1, D)

    @torch.no_grad()
    def cond_latents(self, height: int, width: int) -> torch.Tensor:
        """VAE latents (1,4,h,w) of the noise-augmented conditioning image at the video's size (cached)."""
        key = (height, width)
        if key not in self._cond_latents:
            img = resize_frames(self.cond_image[None], key) * 2 - 1
            img = img + self.noise_aug_strength * randn_like(img, self._cond_generator)
            lat = self.vae.encode(img.to(self.vae_dtype)).latent_dist.mode()
            self._cond_latents[key] = lat.to(self.unet_dtype)
        return self._cond_latents[key]

    def added_time_ids(self, batch: int) -> torch.Tensor:
        # SVD was micro-conditioned on fps - 1 (as the diffusers pipeline passes it).
        ids = torch.tensor([[self.fps - 1.0, self.motion_bucket_id, self.noise_aug_strength]],
                           dtype=self.unet_dtype, device=self.device)
        return ids.expand(batch, 3)

    # -- VideoPrior -----------------------------------------------------------------------------
    def working_frames(self, video: torch.Tensor) -> torch.Tensor:
        frames = resize_frames(video, self.resolution)
        check_size(frames.shape[-2], frames.shape[-1], self.size_multiple, "Stable Video Diffusion")
        return frames

    def encode(self, video, generator=None):
        frames = self.working_frames(video).to(self.device)
        mask = pick_grad_frames(frames.shape[0], self.grad_frames, generator)
        lat = encode_frames(self.vae, (frames * 2 - 1).to(self.vae_dtype), self.vae_chunk, mask)
        return lat.unsqueeze(0)  # (1, T, 4, h, w)

    @torch.no_grad()
    def static_latents(self, video):
        first = self.working_frames(video[:1].detach()).to(self.device)
        lat = encode_frames(self.vae, (first * 2 - 1).to(self.vae_dtype), 1)
        return lat.unsqueeze(0).expand(1, video.shape[0], *lat.shape[1:]).float()

    def loss(self, video, step=0, total_steps=1, generator=None):
        if self.image_embeds is None:  # condition on the clip's own first frame
            self.prepare(cond_image=video[0].detach(), generator=generator)
        return super().loss(video, step, total_steps, generator)

    def noise_level(self, t: float) -> NoiseLevel:
        return edm_level(self.log_sigmas, t)

    def sample_t(self, step, total_steps, generator=None):
        lo, hi = self.t_bounds(step, total_steps)
        u = rand_uniform(generator)
        if self.sigma_sampling == "schedule":
            return lo + (hi - lo) * u
        # Truncated log-normal in sigma by inverse-CDF sampling, mapped back to t.
        a = (math.log(edm_level(self.log_sigmas, lo).sigma) - self.P_mean) / self.P_std
        b = (math.log(edm_level(self.log_sigmas, hi).sigma) - self.P_mean) / self.P_std
        ca, cb = (float(torch.special.ndtr(torch.tensor(v, dtype=torch.float64))) for v in (a, b))
        z = float(torch.special.ndtri(torch.tensor(ca + (cb - ca) * u, dtype=torch.float64)))
        return min(max(t_at_sigma(self.log_sigmas, math.exp(self.P_mean + self.P_std * z)), lo), hi)

    def add_noise(self, latents, level, noise):
        return latents.float() + level.sigma * noise

    @torch.no_grad()
    def network(self, model_in: torch.Tensor, c_noise: float, conditioned: torch.Tensor) -> torch.Tensor:
        """F for a batch of already-scaled inputs (B,F,4,h,w); `conditioned` (B,) bool picks the
        image conditioning per item, the others get zeros (the unconditional branch)."""
        b, n_frames, _, h, w = model_in.shape
        cond_lat = self.cond_latents(h * self.vae_scale, w * self.vae_scale)  # (1,4,h,w)
        flag = conditioned.to(self.device, self.unet_dtype)
        image_lat = cond_lat.unsqueeze(1).expand(b, n_frames, *cond_lat.shape[1:]) * flag.view(b, 1, 1, 1, 1)
        embeds = self.image_embeds.expand(b, -1, -1) * flag.view(b, 1, 1)
        sample = torch.cat([model_in.to(self.unet_dtype), image_lat], dim=2)
        timestep = torch.full((b,), c_noise, dtype=torch.float32, device=self.device)
        out = self.unet(sample, timestep, encoder_hidden_states=embeds, added_time_ids=self.added_time_ids(b),
                        return_dict=False)[0]
        return out.float()

    @property
    def vae_scale(self):
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def predict_eps(self, noisy, level, guidance_scale=None):
        if self.image_embeds is None:
            raise PriorConfigError("call prepare(cond_image=...) before predicting with SVD")
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        c_in, c_skip, c_out, c_noise = edm_coefficients(level.sigma)
        f = cfg_combine(lambda x, flags: self.network(x, c_noise, flags), c_in * noisy.float(), scale,
                        self.max_batch)
        denoised = c_skip * noisy.float() + c_out * f
        return (noisy.float() - denoised) / level.sigma

