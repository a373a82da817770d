"""Video <-> VAE latents helpers shared by the latent-space priors (resizing, chunked encoding)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import PriorConfigError


def resize_frames(frames: torch.Tensor, size) -> torch.Tensor:
    """(T,C,H,W) -> (T,C,h,w), antialiased bilinear (differentiable); no-op at the same size."""
    if size is None or tuple(frames.shape[-2:]) == tuple(size):
        return frames
    return F.interpolate(frames, size=tuple(int(v) for v in size), mode="bilinear", antialias=True,
                         align_corners=False)


def check_size(height: int, width: int, multiple: int, what: str):
    if height % multiple or width % multiple:
        raise PriorConfigError(
            f"{what} needs frames whose height and width are multiples of {multiple}; got {height}x{width}. "
            f"Render at a size such as {max(multiple, height // multiple * multiple)}x"
            f"{max(multiple, width // multiple * multiple)} or set the prior's resolution option.")


def pick_grad_frames(n_frames: int, grad_frames, generator) -> torch.Tensor:
    """Bool mask of the frames encoded with gradient: all, or a random subset of `grad_frames`."""
    mask = torch.ones(n_frames, dtype=torch.bool)
    if grad_frames is None or grad_frames >= n_frames:
        return mask
    if grad_frames < 1:
        raise PriorConfigError(f"grad_frames must be >= 1, got {grad_frames}")
    device = generator.device if generator is not None else "cpu"
    keep = torch.randperm(n_frames, generator=generator, device=device)[:grad_frames].cpu()
    mask[:] = False
    mask[keep] = True
    return mask


def encode_frames(vae, frames_pm1: torch.Tensor, chunk: int, grad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """VAE posterior means of (T,3,H,W) frames in [-1,1], `chunk` frames per call, times scaling_factor.

    Frames outside `grad_mask` are encoded without autograd (the memory option that keeps the
    VAE activations of only some frames).
    """
    n = frames_pm1.shape[0]
    mask = torch.ones(n, dtype=torch.bool) if grad_mask is None else grad_mask
    out = [None] * n
    for want_grad in (True, False):
        idx = [i for i in range(n) if bool(mask[i]) == want_grad]
        with torch.set_grad_enabled(want_grad and torch.is_grad_enabled()):
            for start in range(0, len(idx), max(1, chunk)):
                sel = idx[start:start + max(1, chunk)]
                lat = vae.encode(frames_pm1[sel]).latent_dist.mode()
                for j, i in enumerate(sel):
                    out[i] = lat[j]
    return torch.stack(out) * vae.config.scaling_factor
