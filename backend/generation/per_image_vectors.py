"""The UNet's per-image vectors from two GEMMs instead of 54, for the compiled UNet.

Two kinds of matrix products in every UNet call give one vector per image: each of the 22 ResNets projects the
time embedding to its channels (``time_emb_proj``), and each of the 16 transformer blocks projects the one-token
context to its cross-attention value (``to_v``, then ``to_out``: see ``one_token_attention``). At 16 or 64 rows
each is a GEMM of a few microseconds that is all launch and weight reading. Here the ResNets' projection
weights are stacked into one GEMM whose columns each ResNet takes a slice of, and each block's ``to_out`` after
``to_v`` is composed into one matrix (in float32, once) and stacked into one more GEMM, which a wrapper around the
UNet runs and hands to the blocks (``ResidualInGemmBlock``) through ``cross_attention_kwargs``. The results are
the same up to rounding.

For sampling with the weights as they are, as the last step before compiling: the stacked and composed weights
are copies (a later weight load does not reach them, and gradients do not reach the originals), the ResNets'
``time_emb_proj`` weights move into ``time_embedding`` (the state-dict names change), and the wrapper's own
buffers move with the wrapper, not with the UNet inside it.
"""

from __future__ import annotations

from itertools import accumulate
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.unets.unet_2d_blocks import (CrossAttnDownBlock2D, CrossAttnUpBlock2D, DownBlock2D,
                                                 UNetMidBlock2DCrossAttn, UpBlock2D)

from .one_token_attention import plain_attention
from .residual_in_gemm_block import ONE_TOKEN_VALUES, ResidualInGemmBlock


class ColumnSlice(torch.nn.Module):
    """A ResNet's ``time_emb_proj`` once ``TimeProjections`` has made every ResNet's projection: its columns."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, projections: torch.Tensor) -> torch.Tensor:
        return projections[:, self.start:self.stop]


class TimeProjections(torch.nn.Module):
    """The UNet's time embedding, then every ResNet's activation and time projection as one GEMM."""

    def __init__(self, embedding: TimestepEmbedding, activation: torch.nn.Module, projections: list[torch.nn.Linear]) -> None:
        super().__init__()
        self.embedding, self.activation = embedding, activation
        self.register_buffer("weight", torch.cat([projection.weight.detach() for projection in projections]))
        self.register_buffer("bias", torch.cat([projection.bias.detach() for projection in projections]))

    def forward(self, sample: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(self.activation(self.embedding(sample, condition)), self.weight, self.bias)


class OneTokenValuesUNet(torch.nn.Module):
    """The UNet, its transformer blocks' one-token cross-attention values computed first by one GEMM."""

    def __init__(self, unet: torch.nn.Module, blocks: list[ResidualInGemmBlock]) -> None:
        super().__init__()
        self.unet = unet
        weights, biases = zip(*(composed_value_projection(block.attn2) for block in blocks))
        for block, columns in zip(blocks, column_ranges([len(weight) for weight in weights])):
            block.value_columns = columns
        self.register_buffer("weight", torch.cat(weights))
        self.register_buffer("bias", torch.cat(biases))

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float, encoder_hidden_states: torch.Tensor,
                **kwargs: Any) -> Any:
        if encoder_hidden_states.shape[1] == 1 and not kwargs.get("cross_attention_kwargs"):
            values = F.linear(encoder_hidden_states[:, 0], self.weight, self.bias)
            kwargs["cross_attention_kwargs"] = {ONE_TOKEN_VALUES: values}
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)


def column_ranges(widths: list[int]) -> list[tuple[int, int]]:
    """The (start, stop) columns of each part of a stacked projection, the parts this wide, in order."""
    stops = list(accumulate(widths))
    return list(zip([0, *stops[:-1]], stops))


def composed_value_projection(attn: Attention) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one affine map a plain ``attn`` applies to a one-token context, in its dtype."""
    out, value = attn.to_out[0], attn.to_v
    weight = out.weight.float() @ value.weight.float()
    bias = out.bias.float() + (out.weight.float() @ value.bias.float() if value.bias is not None else 0.0)
    scale = 1.0 / attn.rescale_output_factor
    return (weight * scale).to(out.weight.dtype), (bias * scale).to(out.weight.dtype)


def composable_value(attn: Attention) -> bool:
    """True where ``attn``'s one-token value is ``to_out[0]`` after ``to_v``, nothing else on the way."""
    return plain_attention(attn) and not attn.norm_cross and attn.to_out[0].bias is not None \
        and (attn.to_out[1].p == 0.0 or not attn.training)


# Stable Diffusion 1's (Zero123's) UNet blocks, in which the time embedding reaches ResnetBlock2Ds and nothing else
SD1_BLOCKS = (CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D)


def time_projected_resnets(unet: torch.nn.Module) -> None:
    """Give ``unet`` a ``TimeProjections`` and its ResNets their ``ColumnSlice``s where the UNet's time embedding
    reaches the ResNets as Stable Diffusion 1's does (Zero123's); leave any other UNet as it is."""
    resnets = [module for module in unet.modules() if isinstance(module, ResnetBlock2D)]
    blocks = [*getattr(unet, "down_blocks", ()), getattr(unet, "mid_block", None), *getattr(unet, "up_blocks", ())]
    if not resnets or not isinstance(getattr(unet, "time_embedding", None), TimestepEmbedding) \
            or any(type(block) not in SD1_BLOCKS for block in blocks) \
            or any(getattr(unet, name, None) is not None for name in ("time_embed_act", "class_embedding", "add_embedding")) \
            or any(not plain_time_projection(resnet) for resnet in resnets):
        return
    unet.time_embedding = TimeProjections(unet.time_embedding, resnets[0].nonlinearity,
                                          [resnet.time_emb_proj for resnet in resnets])
    for resnet, columns in zip(resnets, column_ranges([resnet.time_emb_proj.out_features for resnet in resnets])):
        resnet.time_emb_proj, resnet.skip_time_act = ColumnSlice(*columns), True


def plain_time_projection(resnet: ResnetBlock2D) -> bool:
    """True for a ResNet adding ``time_emb_proj(silu(emb))`` to its features, as Stable Diffusion 1's do."""
    return isinstance(resnet.time_emb_proj, torch.nn.Linear) and resnet.time_emb_proj.bias is not None \
        and not resnet.skip_time_act and type(resnet.nonlinearity) is torch.nn.SiLU \
        and resnet.time_embedding_norm == "default"


def batch_per_image_vectors(unet: torch.nn.Module) -> torch.nn.Module:
    """What ``compile()`` compiles: ``unet`` with its time projections in one GEMM, wrapped to give its
    ``ResidualInGemmBlock``s their one-token values from one more (the UNet itself where no block fits)."""
    time_projected_resnets(unet)
    if getattr(unet, "encoder_hid_proj", None) is not None:  # the blocks see a projected context, not the input's
        return unet
    blocks = [module for module in unet.modules() if isinstance(module, ResidualInGemmBlock) and composable_value(module.attn2)]
    return OneTokenValuesUNet(unet, blocks) if blocks else unet
