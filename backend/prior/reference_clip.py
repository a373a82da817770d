"""Reference-video supervision (PhysDreamer's mode): fit the simulation to one given clip.

loss = mean over frames of 0.1 * 0.5 * MSE + 0.9 * (1 - SSIM), SSIM with an 11-tap Gaussian
window (sigma 1.5) on [0,1] images, 'valid' borders, averaged over channels and pixels.

A reference comes from a video file or a folder of frame images (read by backend.io.video), or is
generated once with the real SVD pipeline from the first rendered frame (`generate_reference`)
and cached as a folder of PNG frames.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F

from ..io.video import IMAGE_EXTS, VIDEO_EXTS, VideoError, frame_files, read_video, write_frames_png
from ..io.video import video_info as clip_info
from .errors import PriorConfigError, ReferenceVideoError


def video_info(path: str) -> tuple[int, int, int]:
    """(frames, height, width) of a video file or a frame folder, from metadata / headers only."""
    if not os.path.exists(path):
        raise ReferenceVideoError(f"reference video '{path}' does not exist")
    if os.path.isdir(path):
        if not frame_files(path):
            raise ReferenceVideoError(f"folder '{path}' has no frame images ({', '.join(IMAGE_EXTS)})")
    elif not path.lower().endswith(VIDEO_EXTS):
        raise ReferenceVideoError(f"'{path}' is neither a video file ({', '.join(VIDEO_EXTS)}) nor a frame folder")
    try:
        return clip_info(path)
    except VideoError as err:
        raise ReferenceVideoError(str(err)) from None


def check_fit(info: tuple[int, int, int], n_frames: int | None, size, allow_trim: bool = True, path: str = ""):
    """Raise ReferenceVideoError unless the reference can supply n_frames frames of `size` (H,W)."""
    count, height, width = info
    if n_frames is not None:
        if count < n_frames:
            raise ReferenceVideoError(f"reference '{path}' has {count} frames but the job renders {n_frames}; "
                                      f"use a longer clip or render fewer frames")
        if count > n_frames and not allow_trim:
            raise ReferenceVideoError(f"reference '{path}' has {count} frames, the job renders {n_frames}")
    if size is not None and (height, width) != tuple(size):
        h, w = size
        if abs(height / width - h / w) > 0.01 * (h / w):
            raise ReferenceVideoError(
                f"reference '{path}' is {width}x{height} (aspect {width / height:.3f}) but the job renders "
                f"{w}x{h} (aspect {w / h:.3f}); crop the reference or change the render size to the same aspect")


def load_video(path: str, n_frames: int | None = None, size=None, allow_trim: bool = True) -> torch.Tensor:
    """A reference clip as (T,3,H,W) float32 in [0,1], checked against the job before decoding.

    n_frames: frames the job renders (the first n_frames are used when the clip is longer and
    allow_trim). size: (H,W) of the renders; a clip of the same aspect is resized, another errors.
    """
    info = video_info(path)
    check_fit(info, n_frames, size, allow_trim, path)
    take = info[0] if n_frames is None else n_frames
    try:
        frames, _ = read_video(path, max_frames=take)
    except VideoError as err:
        raise ReferenceVideoError(str(err)) from None
    if len(frames) < take:
        raise ReferenceVideoError(f"video '{path}' ended after {len(frames)} of {take} frames")
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if size is not None and tuple(video.shape[-2:]) != tuple(size):
        video = F.interpolate(video, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return video.clamp(0, 1).contiguous()


def gaussian_window(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-frame SSIM of (T,C,H,W) images in [0,1] -> (T,)."""
    window = min(window, x.shape[-1], x.shape[-2])
    window -= (window + 1) % 2  # odd
    g = gaussian_window(window, sigma).to(x.device, x.dtype)
    c = x.shape[1]
    kx = g.view(1, 1, 1, -1).expand(c, 1, 1, window)
    ky = g.view(1, 1, -1, 1).expand(c, 1, window, 1)

    def blur(img):
        return F.conv2d(F.conv2d(img, kx, groups=c), ky, groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    sxx = blur(x * x) - mx * mx
    syy = blur(y * y) - my * my
    sxy = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def reference_loss(video: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """mean over frames of 0.1 * 0.5 * MSE + 0.9 * (1 - SSIM)."""
    mse = (video - reference).square().flatten(1).mean(1)
    s = ssim(video, reference)
    per_frame = 0.1 * 0.5 * mse + 0.9 * (1.0 - s)
    return per_frame.mean(), {"mse": float(mse.detach().mean()), "ssim": float(s.detach().mean())}


class ReferenceVideoLoss:
    """The reference-fitting loss behind the same `loss(video, step, total_steps, generator)` call as a prior."""

    kind = "reference"

    def __init__(self, reference: torch.Tensor):
        self.reference = reference.detach().float()

    @classmethod
    def from_file(cls, path: str, n_frames: int, size, allow_trim: bool = True):
        return cls(load_video(path, n_frames, size, allow_trim))

    def prepare(self, cond_image=None, prompt=None, negative_prompt=None, generator=None):
        """Nothing to cache: the reference is the conditioning."""

    def loss(self, video, step=0, total_steps=1, generator=None):
        if tuple(video.shape) != tuple(self.reference.shape):
            raise PriorConfigError(f"rendered video {tuple(video.shape)} does not match the reference "
                                   f"{tuple(self.reference.shape)}")
        loss, info = reference_loss(video.float(), self.reference.to(video.device))
        info.update(loss=float(loss.detach()), loss_type="reference")
        if not math.isfinite(info["loss"]):
            raise FloatingPointError("the reference loss is not finite")
        return loss, info


def _cache_key(prior, cond_image: torch.Tensor, params: dict) -> str:
    h = hashlib.sha256()
    h.update(str(getattr(prior, "folder", "")).encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update((cond_image.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8).tobytes())
    return h.hexdigest()


def generate_reference(prior, cond_image: torch.Tensor, num_frames: int, cache_dir: str, num_inference_steps: int = 25,
                       seed: int = 0, min_guidance_scale: float = 1.0, max_guidance_scale: float = 3.0,
                       motion_bucket_id=None, fps=None, noise_aug_strength=None, decode_chunk_size: int = 8,
                       progress=False) -> torch.Tensor:
    """Generate one reference clip with the SVD pipeline from the first rendered frame, cached.

    The clip has the conditioning image's size (H, W multiples of 8) and is stored as PNG frames in
    `cache_dir` with a meta.json; a later call with the same model, image and settings reads it back.
    PhysDreamer's advice: a low motion_bucket_id (5-10) and a close frontal view.
    """
    from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from PIL import Image

    from .loader import clip_image_processor_class

    if getattr(prior, "kind", None) != "svd":
        raise PriorConfigError("reference generation needs the Stable Video Diffusion prior (kind 'svd')")
    img = torch.as_tensor(cond_image).detach().float().clamp(0, 1).cpu()
    if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] % 8 or img.shape[2] % 8:
        raise PriorConfigError(f"the conditioning image must be (3,H,W) with H, W multiples of 8, got {tuple(img.shape)}")
    params = dict(num_frames=int(num_frames), steps=int(num_inference_steps), seed=int(seed),
                  min_cfg=float(min_guidance_scale), max_cfg=float(max_guidance_scale),
                  motion_bucket_id=float(prior.motion_bucket_id if motion_bucket_id is None else motion_bucket_id),
                  fps=float(prior.fps if fps is None else fps),
                  noise_aug=float(prior.noise_aug_strength if noise_aug_strength is None else noise_aug_strength))
    key = _cache_key(prior, img, params)
    meta_path = os.path.join(cache_dir, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            if json.load(f).get("key") == key:
                return load_video(cache_dir, n_frames=num_frames)

    folder = getattr(prior, "folder", None)
    processor_cls = clip_image_processor_class()
    if folder:
        processor = processor_cls.from_pretrained(os.path.join(folder, "feature_extractor"), local_files_only=True)
    else:
        processor = processor_cls(image_mean=prior.image_mean.flatten().tolist(), image_std=prior.image_std.flatten().tolist())
    pipe = StableVideoDiffusionPipeline(vae=prior.vae, image_encoder=prior.image_encoder, unet=prior.unet,
                                        scheduler=EulerDiscreteScheduler.from_config(prior.scheduler.config),
                                        feature_extractor=processor)
    pipe.set_progress_bar_config(disable=not progress)
    pil = Image.fromarray((img.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
    generator = torch.Generator(device=prior.device).manual_seed(int(seed))
    with torch.no_grad():
        latents = pipe(pil, height=img.shape[1], width=img.shape[2], num_frames=int(num_frames),
                       num_inference_steps=int(num_inference_steps), min_guidance_scale=min_guidance_scale,
                       max_guidance_scale=max_guidance_scale, fps=int(params["fps"]),
                       motion_bucket_id=int(params["motion_bucket_id"]), noise_aug_strength=params["noise_aug"],
                       generator=generator, output_type="latent").frames
        # Decode ourselves in the VAE's own dtype (the pipeline would decode an upcast VAE in fp16).
        z = latents[0].to(prior.vae_dtype) / prior.vae.config.scaling_factor
        frames = [prior.vae.decode(z[i:i + decode_chunk_size], num_frames=len(z[i:i + decode_chunk_size])).sample
                  for i in range(0, len(z), decode_chunk_size)]
    video = (torch.cat(frames).float() / 2 + 0.5).clamp(0, 1).cpu()
    os.makedirs(os.path.dirname(os.path.abspath(cache_dir)), exist_ok=True)
    tmp = f"{cache_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write_frames_png(video.permute(0, 2, 3, 1).numpy(), tmp)
    with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
        json.dump({"key": key, "params": params, "model": str(folder)}, f, indent=1)
    shutil.rmtree(cache_dir, ignore_errors=True)
    os.replace(tmp, cache_dir)
    return load_video(cache_dir, n_frames=num_frames)
