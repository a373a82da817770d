"""Tiny, randomly initialised SVD and ModelScope pipelines built from config (for tests and benchmarks;
not shipped: the extension's zip leaves tests/ out).

They are saved with save_pretrained, so they load through exactly the same `load_prior` path as
real weights. Sizes: the VAEs downsample by 2 and the UNets by 2, so frames must be multiples of
4 pixels (64x64 -> 32x32 latents); any frame count works.
"""
from __future__ import annotations

import json
import os
import string
import tempfile

import torch

from backend.prior.loader import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, clip_image_processor_class

TINY_SVD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          prediction_type="v_prediction", interpolation_type="linear", use_karras_sigmas=True,
                          sigma_min=0.002, sigma_max=700.0, timestep_type="continuous", timestep_spacing="leading",
                          steps_offset=1)
TINY_TEXT_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           num_train_timesteps=1000, prediction_type="epsilon", clip_sample=False,
                           set_alpha_to_one=False, steps_offset=1)


def _seeded(seed):
    torch.manual_seed(seed)


def build_tiny_svd(seed: int = 0):
    """A StableVideoDiffusionPipeline with about 1.3 M UNet parameters, in eval mode."""
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    _seeded(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=32, in_channels=8, out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
        layers_per_block=1, cross_attention_dim=32, num_attention_heads=(2, 4), num_frames=8).eval()
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                       latent_channels=4, layers_per_block=1).eval()
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        image_size=224, patch_size=56, hidden_size=32, projection_dim=32, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=37)).eval()
    processor = clip_image_processor_class()(crop_size=224, size={"shortest_edge": 224}, image_mean=CLIP_IMAGE_MEAN,
                                             image_std=CLIP_IMAGE_STD)
    scheduler = EulerDiscreteScheduler(**TINY_SVD_SCHEDULER)
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=image_encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=processor)


def write_tiny_clip_vocab(folder: str) -> tuple[str, str]:
    """A minimal CLIP BPE vocabulary: the special tokens, single letters and letters ending a word."""
    os.makedirs(folder, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        for ch in string.ascii_lowercase + string.digits + ".,!?'-":
            vocab.setdefault(ch + suffix, len(vocab))
    merges = ["#version: 0.2", "t h", "th e</w>", "i n", "in g</w>"]
    vocab.update({"th": len(vocab), "the</w>": len(vocab) + 1, "in": len(vocab) + 2, "ing</w>": len(vocab) + 3})
    vocab_path, merges_path = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_path, "w", encoding="utf-8") as f:
        json.dump(vocab, f)
    with open(merges_path, "w", encoding="utf-8") as f:
        f.write("\n".join(merges) + "\n")
    return vocab_path, merges_path


def build_tiny_modelscope(workdir: str, seed: int = 0):
    """A TextToVideoSDPipeline-shaped set of tiny components; `workdir` receives the vocab files."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    _seeded(seed)
    vocab_path, merges_path = write_tiny_clip_vocab(os.path.join(workdir, "tiny_vocab"))
    tokenizer = CLIPTokenizer(vocab_path, merges_path, model_max_length=16)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=16, projection_dim=32, bos_token_id=0, eos_token_id=1, pad_token_id=1)).eval()
    unet = UNet3DConditionModel(
        sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"), up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32, attention_head_dim=8,
        norm_num_groups=32).eval()
    vae = AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
                        norm_num_groups=32).eval()
    scheduler = DDIMScheduler(**TINY_TEXT_SCHEDULER)
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_tiny_svd(folder: str, seed: int = 0) -> str:
    pipe = build_tiny_svd(seed)
    pipe.save_pretrained(folder)
    return folder


def save_tiny_modelscope(folder: str, seed: int = 0) -> str:
    """Saves the components as a TextToVideoSDPipeline folder (model_index.json + component folders)."""
    from diffusers import TextToVideoSDPipeline

    with tempfile.TemporaryDirectory() as scratch:
        parts = build_tiny_modelscope(scratch, seed)
        TextToVideoSDPipeline(**parts).save_pretrained(folder)
    return folder
