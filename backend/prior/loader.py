"""load_prior: settings are checked, then the model folder, and only then are weights loaded.

Weights are always loaded with local_files_only=True (a job never downloads): a hub id must
already be in the Hugging Face cache. fp16 on CUDA, fp32 on CPU by default; a VAE whose config
asks for force_upcast stays in fp32.
"""
from __future__ import annotations

import json
import os

from .errors import ModelUnavailable, PriorConfigError
from .models import MODEL_KINDS, locate_model

COMMON_OPTIONS = {"loss_type", "guidance_scale", "t_range", "anneal_to", "weighting", "reduction",
                  "resolution", "vae_chunk", "grad_frames", "max_batch", "attention_slicing",
                  "vae_checkpointing", "variant"}
KIND_OPTIONS = {
    "svd": {"fps", "motion_bucket_id", "noise_aug_strength", "sigma_sampling", "P_mean", "P_std", "cond_image"},
    "modelscope": {"prompt", "negative_prompt"},
}
_LOAD_ONLY = {"attention_slicing", "vae_checkpointing", "variant", "cond_image", "prompt", "negative_prompt"}
# CLIP's image normalisation: what an SVD folder's feature_extractor config holds when it says nothing.
CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_image_processor_class():
    """The PIL-backed CLIP image processor (transformers 5 without torchvision), else the classic one."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def validate_options(kind: str, opts: dict) -> None:
    """Cheap checks of the options a caller passes (no torch import): raises PriorConfigError.

    A job's settings were validated by the job schema (protocol) already; the prompt of a text model
    is checked where it is used (ModelScopePrior.prepare)."""
    if kind not in KIND_OPTIONS:
        raise PriorConfigError(f"unknown video prior {kind!r}; choose 'svd' (image-to-video) or 'modelscope' "
                               f"(text-to-video)")
    unknown = set(opts) - COMMON_OPTIONS - KIND_OPTIONS[kind]
    if unknown:
        raise PriorConfigError(f"options {sorted(unknown)} do not apply to the {kind} prior")
    res = opts.get("resolution")
    if res is not None:
        try:
            ok = len(res) == 2 and min(int(v) for v in res) >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise PriorConfigError(f"resolution must be (height, width) in pixels, got {res!r}")
    for key in ("vae_chunk", "max_batch"):
        if key in opts and int(opts[key]) < 1:
            raise PriorConfigError(f"{key} must be >= 1, got {opts[key]}")


def _variant(folder: str, dtype_is_half: bool) -> str | None:
    """Use the fp16 weight files when those are the only ones present (or when loading fp16 and both are)."""
    names = os.listdir(folder)
    weights = [n for n in names if n.endswith((".safetensors", ".safetensors.index.json"))]
    has_full = any(".fp16." not in n for n in weights)
    has_half = any(".fp16." in n for n in weights)
    if has_half and (not has_full or dtype_is_half):
        return "fp16"
    return None


def _read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_prior(kind: str, model: str, device="cpu", dtype=None, **opts):
    """Load an "svd" or "modelscope" video prior from a local folder or a cached hub id.

    opts: loss/guidance (loss_type "mds"|"sds", guidance_scale, t_range, anneal_to, weighting,
    reduction "sum"|"mean"), memory (resolution=(H,W), vae_chunk, grad_frames, max_batch,
    attention_slicing, vae_checkpointing), variant, and per kind: SVD fps, motion_bucket_id,
    noise_aug_strength, sigma_sampling, P_mean, P_std, cond_image; ModelScope prompt (required),
    negative_prompt. Raises PriorConfigError / ModelUnavailable before loading any weights.
    """
    validate_options(kind, opts)
    folder = locate_model(kind, model)

    import torch

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    if dtype == torch.float16 and device.type != "cuda":
        raise PriorConfigError("fp16 video priors need a CUDA device; use dtype=float32 on the CPU")
    variant = opts.pop("variant", "auto")
    load_opts = {k: opts.pop(k) for k in list(opts) if k in _LOAD_ONLY}
    half = dtype == torch.float16

    def pick(sub):
        return _variant(os.path.join(folder, sub), half) if variant == "auto" else variant

    try:
        prior = (_load_svd if kind == "svd" else _load_modelscope)(folder, device, dtype, pick, opts)
    except (PriorConfigError, ModelUnavailable):
        raise
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise ModelUnavailable(f"the {MODEL_KINDS[kind][2]} model at {folder} failed to load: {err}. "
                               f"It may be incomplete or from an incompatible diffusers version; download "
                               f"it again.") from err

    unet = prior.unet
    if load_opts.get("attention_slicing"):
        if hasattr(unet, "set_attention_slice"):
            unet.set_attention_slice("auto")
        elif hasattr(unet, "enable_forward_chunking"):  # SVD's UNet: chunk the feed-forward layers
            unet.enable_forward_chunking()
    if load_opts.get("vae_checkpointing"):
        prior.vae.enable_gradient_checkpointing()
    if kind == "svd" and load_opts.get("cond_image") is not None:
        prior.prepare(cond_image=load_opts["cond_image"])
    if kind == "modelscope":
        prior.prepare(prompt=load_opts.get("prompt"), negative_prompt=load_opts.get("negative_prompt"))
    return prior


def _frozen(module, device):
    module.to(device=device).eval()
    module.requires_grad_(False)
    return module


def _vae_dtype(folder, dtype):
    """fp32 for a VAE whose config asks for force_upcast (SVD's does), else the prior's dtype."""
    import torch
    if dtype != torch.float16:
        return dtype
    cfg = _read_json(os.path.join(folder, "vae", "config.json"))
    return torch.float32 if cfg.get("force_upcast", False) else dtype


# low_cpu_mem_usage needs `accelerate`, which is not a dependency; diffusers falls back (noisily) without it.
# use_safetensors: weights are read only from .safetensors files; a .bin file is a pickle that can run code.
_DIFFUSERS = dict(local_files_only=True, low_cpu_mem_usage=False, use_safetensors=True)
_TRANSFORMERS = dict(local_files_only=True, use_safetensors=True)


def _load_svd(folder, device, dtype, pick, opts):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionModelWithProjection

    from .svd import SVDPrior

    unet = UNetSpatioTemporalConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype,
                                                            variant=pick("unet"), **_DIFFUSERS)
    vae = AutoencoderKLTemporalDecoder.from_pretrained(folder, subfolder="vae", torch_dtype=_vae_dtype(folder, dtype),
                                                       variant=pick("vae"), **_DIFFUSERS)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(
        os.path.join(folder, "image_encoder"), dtype=dtype, variant=pick("image_encoder"), **_TRANSFORMERS)
    scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    proc = _read_json(os.path.join(folder, "feature_extractor", "preprocessor_config.json"))
    prior = SVDPrior(_frozen(unet, device), _frozen(vae, device), _frozen(image_encoder, device), scheduler,
                     image_mean=proc.get("image_mean", CLIP_IMAGE_MEAN), image_std=proc.get("image_std", CLIP_IMAGE_STD),
                     device=device, dtype=dtype, **opts)
    prior.folder = folder
    return prior


def _load_modelscope(folder, device, dtype, pick, opts):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .modelscope import ModelScopePrior

    unet = UNet3DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype, variant=pick("unet"),
                                                **_DIFFUSERS)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=_vae_dtype(folder, dtype),
                                        variant=pick("vae"), **_DIFFUSERS)
    text_encoder = CLIPTextModel.from_pretrained(os.path.join(folder, "text_encoder"), dtype=dtype,
                                                 variant=pick("text_encoder"), **_TRANSFORMERS)
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(folder, "tokenizer"), **_TRANSFORMERS)
    # Any scheduler class of the repo gives the same training alphas_cumprod and prediction type.
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    prior = ModelScopePrior(_frozen(unet, device), _frozen(vae, device), _frozen(text_encoder, device),
                            tokenizer, scheduler,
                            device=device, dtype=dtype, **opts)
    prior.folder = folder
    return prior
