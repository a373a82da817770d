"""Save a randomly initialised Stable Video Diffusion XT pipeline with SVD-xt's full configuration
(the real layer sizes: a 1.5 B-parameter UNet for 25 frames, the temporal-decoder VAE, the ViT-H/14
image encoder) in fp16, so the estimate benchmark can time one distillation iteration through the
product's own loader without downloading weights:

    python benchmarks/svd_xt_random.py DIR
    python benchmarks/estimate.py --case svd-xt-cuda svd DIR 5000 256 25 cuda 2

The weights are noise: the figures are timings and memory, not results.
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from backend.prior.loader import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, clip_image_processor_class  # noqa: E402
from support.tiny_models import TINY_SVD_SCHEDULER  # noqa: E402

# stabilityai/stable-video-diffusion-img2vid-xt: unet/config.json is diffusers' default for this
# class with sample_size 96; vae/config.json and image_encoder/config.json as below.
VAE_CONFIG = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=768,
                  scaling_factor=0.18215, force_upcast=True)
IMAGE_ENCODER_CONFIG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                            patch_size=14, image_size=224, projection_dim=1024, hidden_act="gelu", layer_norm_eps=1e-5)


def build(seed: int = 0, device: str = "cpu"):
    from diffusers import (AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline,
                           UNetSpatioTemporalConditionModel)
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    with torch.device(device):  # initialising 2.2 B parameters is much faster on a GPU
        unet = UNetSpatioTemporalConditionModel(sample_size=96, num_frames=25)
        vae = AutoencoderKLTemporalDecoder(**VAE_CONFIG)
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**IMAGE_ENCODER_CONFIG))
    processor = clip_image_processor_class()(crop_size=224, size={"shortest_edge": 224}, image_mean=CLIP_IMAGE_MEAN,
                                             image_std=CLIP_IMAGE_STD)
    pipe = StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet,
                                        scheduler=EulerDiscreteScheduler(**TINY_SVD_SCHEDULER),
                                        feature_extractor=processor)
    return pipe.to(torch.float16)


def main() -> None:
    folder = sys.argv[1]
    pipe = build(device="cuda" if torch.cuda.is_available() else "cpu")
    params = sum(p.numel() for p in pipe.unet.parameters())
    pipe.save_pretrained(folder)
    print(f'{{"case": "svd-xt-random", "folder": "{folder}", "unet_parameters": {params}}}', flush=True)


if __name__ == "__main__":
    main()
