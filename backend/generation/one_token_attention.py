"""Cross-attention to a one-token context, without the attention: Zero123's context is one token.

Softmax over a single key is exactly 1 whatever the query, so every query position receives that token's
value: the output is ``to_out(to_v(context))`` for each image, broadcast over the sequence. Computing it once
per image skips the query and key projections, the attention kernel and the output projection over every
position in each of the UNet's transformer blocks; the result is the same up to float rounding.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.models.attention_processor import Attention


class OneTokenCrossAttention:
    """A diffusers attention processor: the shortcut for a one-token context, ``fallback`` for anything else."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] != 1 or attention_mask is not None \
                or hidden_states.ndim != 3 or not plain_attention(attn):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return one_token_value(attn, encoder_hidden_states).expand(-1, hidden_states.shape[1], -1)


def plain_attention(attn: Attention) -> bool:
    """True where the output is the attention alone: no spatial or group norm, no residual inside."""
    return attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection


def one_token_value(attn: Attention, context: torch.Tensor) -> torch.Tensor:
    """What a plain ``attn`` gives every position for a one-token ``context`` (batch, 1, channels)."""
    context = attn.norm_encoder_hidden_states(context) if attn.norm_cross else context
    return attn.to_out[1](attn.to_out[0](attn.to_v(context))) / attn.rescale_output_factor


def use_one_token_cross_attention(unet: torch.nn.Module) -> None:
    """Give every cross-attention module of ``unet`` the shortcut, keeping its current processor as the fallback.

    Call again after anything that resets the processors (``fuse_qkv_projections``)."""
    for module in unet.modules():
        if isinstance(module, Attention) and module.is_cross_attention and not isinstance(module.processor, OneTokenCrossAttention):
            module.set_processor(OneTokenCrossAttention(module.processor))
