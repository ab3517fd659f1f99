"""Tiny seeded random Zero123 components (the diffusers test pattern), shared by the generator and pipeline tests."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from backend.generation.convert import LdmArchitecture
from backend.generation.projection import CameraProjection
from backend.generation.zero123 import Zero123Generator

TINY = LdmArchitecture(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(1,), num_heads=8,
                       context_dim=32, vae_channels=16, vae_channel_mult=(1, 1, 2, 2), vae_num_res_blocks=1,
                       norm_num_groups=8)
CLIP = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4, image_size=224,
                        patch_size=32, projection_dim=16)


def tiny_generator(seed: int = 0, **kwargs) -> Zero123Generator:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY.unet_config())
    vae = AutoencoderKL(**TINY.vae_config())
    clip = CLIPVisionModelWithProjection(CLIP)
    projection = CameraProjection(CLIP.projection_dim, TINY.context_dim)
    return Zero123Generator(unet, vae, clip, projection, **kwargs)
