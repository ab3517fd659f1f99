"""Our own small view generator: the Zero123 architecture at a size we can train from scratch and ship.

Same four parts as Zero123-XL (a UNet over VAE latents with 8 input channels, an AutoencoderKL, a CLIP vision
tower with projection, the camera projection), so the exported folder loads through ``Zero123Generator``
unchanged. The default sizes fit the shipping budget (every weights file under 16 MB, 40 MB in all) when
stored in float16, and train in about 20 minutes on one H100.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .convert import LdmArchitecture
from .projection import CameraProjection
from .zero123 import START_NOISED_CONDITION, SamplerConfig, Zero123Generator

# Weights are trained in float32 and shipped in float16: twice the network for the same file sizes.
EXPORT_DTYPE = torch.float16

SMALL_ARCHITECTURE = LdmArchitecture(
    model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=2, attention_resolutions=(1, 2, 4), num_heads=4,
    context_dim=256, vae_channels=32, vae_channel_mult=(1, 2, 4, 4), vae_num_res_blocks=1, scale_factor=1.0,
    norm_num_groups=16,
)


@dataclass(frozen=True)
class SmallGeneratorConfig:
    """UNet and VAE sizes (``architecture``) plus the CLIP vision tower's; ``embedding_dim`` is its projection size."""

    architecture: LdmArchitecture = field(default_factory=lambda: SMALL_ARCHITECTURE)
    clip_image_size: int = 128
    clip_patch_size: int = 16
    clip_hidden_size: int = 192
    clip_layers: int = 6
    clip_heads: int = 3
    clip_intermediate_size: int = 768
    embedding_dim: int = 256

    @property
    def image_size(self) -> int:
        return self.architecture.image_size

    def clip_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(hidden_size=self.clip_hidden_size, intermediate_size=self.clip_intermediate_size,
                                num_hidden_layers=self.clip_layers, num_attention_heads=self.clip_heads,
                                image_size=self.clip_image_size, patch_size=self.clip_patch_size,
                                projection_dim=self.embedding_dim)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SmallGeneratorConfig:
        """Inverse of ``to_dict`` (JSON turns the architecture's tuples into lists)."""
        arch = {k: tuple(v) if isinstance(v, list) else v for k, v in values["architecture"].items()}
        return cls(**{**values, "architecture": LdmArchitecture(**arch)})


# A few thousand parameters per part: for tests and smoke runs (64 x 64 images, 8 x 8 latents).
TINY_GENERATOR = SmallGeneratorConfig(
    architecture=LdmArchitecture(image_size=64, model_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                                 attention_resolutions=(2,), num_heads=2, context_dim=32, vae_channels=8,
                                 vae_channel_mult=(1, 1, 2, 2), vae_num_res_blocks=1, scale_factor=1.0, norm_num_groups=8),
    clip_image_size=32, clip_patch_size=16, clip_hidden_size=32, clip_layers=1, clip_heads=2, clip_intermediate_size=64,
    embedding_dim=32,
)


class GeneratorNetworks(nn.Module):
    """The four parts as one module, so optimizers, EMA and checkpoints see a single state dict."""

    def __init__(self, config: SmallGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        arch = config.architecture
        self.unet = UNet2DConditionModel(**arch.unet_config())
        self.vae = AutoencoderKL(**arch.vae_config())
        self.image_encoder = CLIPVisionModelWithProjection(config.clip_config())
        self.projection = CameraProjection(config.embedding_dim, arch.context_dim)
        _init_projection(self.projection)

    def save_generator(self, folder: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """Write the diffusers folder ``Zero123Generator.from_folder`` loads, from ``weights`` (e.g. EMA) or the live ones.

        The copy is cast here, as one module, so diffusers' per-model cast warnings stay quiet.
        """
        copy_ = copy.deepcopy(self).to("cpu", EXPORT_DTYPE).to(memory_format=torch.contiguous_format)
        if weights is not None:
            copy_.load_state_dict(weights)
        sampler = SamplerConfig(start=START_NOISED_CONDITION)  # our VAE's latents are not zero-mean: see SamplerConfig.start
        Zero123Generator(copy_.unet, copy_.vae, copy_.image_encoder, copy_.projection, "cpu", EXPORT_DTYPE,
                         sampler).save_folder(folder)


def _init_projection(projection: CameraProjection) -> None:
    """As the reference initialises cc_projection: identity on the image embedding, zero on the pose and bias.

    The pose then starts with no influence and the token starts as the CLIP embedding itself.
    """
    with torch.no_grad():
        weight = projection.projection.weight
        weight.zero_()
        projection.projection.bias.zero_()
        size = min(projection.embedding_dim, projection.context_dim)
        weight[:size, :size] = torch.eye(size)
