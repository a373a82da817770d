"""ModelScope text-to-video (UNet3DConditionModel, eps-prediction on DDPM alphas_cumprod) as a prior.

x_t = sqrt(ab) z + sqrt(1 - ab) eps at the integer training timestep nearest to the sampled
position t; text conditioning through the CLIP text encoder; the unconditional branch uses the
negative prompt (empty by default), as the diffusers text-to-video pipeline does.
"""
from __future__ import annotations

import math

import torch

from .errors import PriorConfigError
from .guidance import NoiseLevel, VideoPrior, cfg_combine
from .schedules import discrete_vp_level
from .vae_io import check_size, encode_frames, pick_grad_frames, resize_frames


class ModelScopePrior(VideoPrior):
    kind = "modelscope"
    default_guidance_scale = 100.0  # as in SDS / DreamPhysics' text-conditioned runs

    def __init__(self, unet, vae, text_encoder, tokenizer, scheduler, *, resolution=None, vae_chunk=8,
                 grad_frames=None, max_batch=4, **base):
        super().__init__(**base)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorConfigError(f"unsupported prediction_type {self.prediction_type!r}")
        self.alphas_cumprod = scheduler.alphas_cumprod.double().cpu()
        self.resolution = None if resolution is None else tuple(int(v) for v in resolution)
        self.vae_chunk, self.grad_frames, self.max_batch = int(vae_chunk), grad_frames, int(max_batch)
        vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.size_multiple = vae_scale * 2 ** (len(unet.config.block_out_channels) - 1)
        self.prompt = None
        self.text_embeds = None  # (2, L, D): [negative, positive]

    @torch.no_grad()
    def _embed(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def prepare(self, cond_image=None, prompt=None, negative_prompt=None, generator=None):
        """Cache the prompt's and the negative prompt's text embeddings."""
        if prompt is None or not str(prompt).strip():
            raise PriorConfigError("the text-to-video prior needs a prompt describing the motion, "
                                   "e.g. 'a red flower swaying in the wind'")
        self.prompt = str(prompt)
        neg = self._embed(str(negative_prompt or ""))
        pos = self._embed(self.prompt)
        self.text_embeds = torch.cat([neg, pos]).to(self.unet_dtype)

    def working_frames(self, video):
        frames = resize_frames(video, self.resolution)
        check_size(frames.shape[-2], frames.shape[-1], self.size_multiple, "the text-to-video model")
        return frames

    def encode(self, video, generator=None):
        frames = self.working_frames(video).to(self.device)
        mask = pick_grad_frames(frames.shape[0], self.grad_frames, generator)
        lat = encode_frames(self.vae, (frames * 2 - 1).to(self.vae_dtype), self.vae_chunk, mask)
        return lat.permute(1, 0, 2, 3).unsqueeze(0)  # (1, 4, T, h, w)

    @torch.no_grad()
    def static_latents(self, video):
        first = self.working_frames(video[:1].detach()).to(self.device)
        lat = encode_frames(self.vae, (first * 2 - 1).to(self.vae_dtype), 1)  # (1,4,h,w)
        return lat.permute(1, 0, 2, 3).unsqueeze(0).expand(1, -1, video.shape[0], -1, -1).float()

    def noise_level(self, t):
        return discrete_vp_level(self.alphas_cumprod, t)

    def add_noise(self, latents, level, noise):
        return math.sqrt(level.alpha_bar) * latents.float() + math.sqrt(1.0 - level.alpha_bar) * noise

    @torch.no_grad()
    def network(self, x, timestep, conditioned):
        b = x.shape[0]
        embeds = self.text_embeds[conditioned.long().to(self.device)]
        t = torch.full((b,), int(timestep), dtype=torch.long, device=self.device)
        return self.unet(x.to(self.unet_dtype), t, encoder_hidden_states=embeds, return_dict=False)[0].float()

    def predict_eps(self, noisy, level: NoiseLevel, guidance_scale=None):
        if self.text_embeds is None:
            raise PriorConfigError("the text-to-video prior needs prepare(prompt=...) first")
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        out = cfg_combine(lambda x, flags: self.network(x, level.timestep, flags), noisy.float(), scale,
                          self.max_batch)
        a, s = math.sqrt(level.alpha_bar), math.sqrt(1.0 - level.alpha_bar)
        if self.prediction_type == "v_prediction":
            return a * out + s * noisy.float()
        if self.prediction_type == "sample":
            return (noisy.float() - a * out) / s
        return out
