"""A UNet transformer block whose residual sums ride in the output projections' GEMMs, for the compiled UNet.

In Zero123's transformer blocks the cross-attention output is one value per image (the context is one token,
see ``one_token_attention``). diffusers adds it, the self-attention output and the residual in the layer norm
before the feed-forward; Inductor fuses those sums into that norm, and the per-image value, read broadcast over
the pixels, makes the norm a looped two-pass reduction instead of a one-pass persistent one. Inductor then
recomputes the sums again for the block's last residual. Here the residual, the per-image value and the bias go
in as the accumulator input of the self-attention's output GEMM (``addmm``'s ``beta`` term), and the sum it
returns, plus the feed-forward's bias, as that of the feed-forward's last GEMM: every sum is computed once, by
cuBLAS, and each norm reads one contiguous tensor. The result is the same up to bf16 rounding of the sums.

The GEMMs accumulate in place (``add_matmul_``): an out-of-place ``addmm`` first copies its accumulator into a new
output buffer, one extra read and write of the activations per GEMM. Inductor gives the op the buffer its fused
sum kernel has just written and that nothing else reads, so nothing is copied.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.activations import GEGLU
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention

from .one_token_attention import one_token_value, plain_attention

ONE_TOKEN_VALUES = "one_token_values"  # the ``cross_attention_kwargs`` key of every block's one-token value at once

# the module's own name as the op namespace: a second copy of the backend in one process (the add-on's, a
# script's) registers its own op instead of colliding with this one
OP_NAMESPACE = __name__.replace(".", "_")


@torch.library.custom_op(f"{OP_NAMESPACE}::add_matmul_", mutates_args=("accumulator",))
def add_matmul_(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """``accumulator += left @ right`` in place, all three 2-D: cuBLAS's ``beta`` term with no copy first.
    For sampling: it has no gradient (``ResidualInGemmBlock.needs_gradient``)."""
    accumulator.addmm_(left, right)


@add_matmul_.register_fake
def _add_matmul_shapes(accumulator: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
    """Nothing to allocate: the op writes its accumulator."""


class ResidualInGemmBlock(torch.nn.Module):
    """``BasicTransformerBlock`` in its layer-norm form (its ``norm1``, ``attn1``, ``norm2``, ``attn2``,
    ``norm3`` and ``ff``, under the same names), the residual sums in the output GEMMs for a one-token context."""

    def __init__(self, block: BasicTransformerBlock) -> None:
        super().__init__()
        for name in ("norm1", "attn1", "norm2", "attn2", "norm3", "ff"):
            setattr(self, name, getattr(block, name))
        # where this block's one-token value is among the columns of ``cross_attention_kwargs[ONE_TOKEN_VALUES]``,
        # when a wrapper computes every block's at once (``per_image_vectors``); else the block computes its own
        self.value_columns: tuple[int, int] | None = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                encoder_hidden_states: torch.Tensor | None = None, encoder_attention_mask: torch.Tensor | None = None,
                timestep: Any = None, cross_attention_kwargs: dict[str, Any] | None = None, class_labels: Any = None,
                added_cond_kwargs: Any = None) -> torch.Tensor:
        cross_attention_kwargs = dict(cross_attention_kwargs or {})
        values = cross_attention_kwargs.pop(ONE_TOKEN_VALUES, None)
        if encoder_hidden_states is None or encoder_hidden_states.shape[1] != 1 or attention_mask is not None \
                or encoder_attention_mask is not None or cross_attention_kwargs \
                or self.needs_gradient(hidden_states, encoder_hidden_states):
            return self.plain_forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                      cross_attention_kwargs)
        value = one_token_value(self.attn2, encoder_hidden_states) if values is None or self.value_columns is None \
            else values[:, None, self.value_columns[0]:self.value_columns[1]]
        out = self.attn1.to_out[0]
        attended = self_attention_heads(self.attn1, self.norm1(hidden_states))
        hidden_states = (hidden_states + value + out.bias).contiguous()
        add_matmul_(hidden_states.flatten(0, 1), attended.flatten(0, 1), out.weight.t())
        last = self.ff.net[2]
        gated = self.ff.net[0](self.norm3(hidden_states))
        summed = (hidden_states + last.bias).contiguous()
        add_matmul_(summed.flatten(0, 1), gated.flatten(0, 1), last.weight.t())
        return summed

    def needs_gradient(self, *inputs: torch.Tensor) -> bool:
        """True where autograd would need this call's gradient: ``add_matmul_`` has none, so it takes the plain path."""
        return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in (*inputs, *self.parameters()))

    def plain_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None,
                      encoder_hidden_states: torch.Tensor | None, encoder_attention_mask: torch.Tensor | None,
                      cross_attention_kwargs: dict[str, Any]) -> torch.Tensor:
        """What ``BasicTransformerBlock`` computes in this form, for any other call."""
        hidden_states = self.attn1(self.norm1(hidden_states), attention_mask=attention_mask,
                                   **cross_attention_kwargs) + hidden_states
        hidden_states = self.attn2(self.norm2(hidden_states), encoder_hidden_states=encoder_hidden_states,
                                   attention_mask=encoder_attention_mask, **cross_attention_kwargs) + hidden_states
        return self.ff(self.norm3(hidden_states)) + hidden_states


def self_attention_heads(attn: Attention, hidden_states: torch.Tensor) -> torch.Tensor:
    """``attn``'s multi-head self-attention of ``hidden_states`` (batch, sequence, channels), before ``to_out``."""
    qkv = attn.to_qkv(hidden_states) if getattr(attn, "fused_projections", False) else \
        torch.cat([attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)], dim=-1)
    batch, sequence, _ = hidden_states.shape
    query, key, value = qkv.view(batch, sequence, 3, attn.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    attended = F.scaled_dot_product_attention(query, key, value, scale=attn.scale)
    return attended.transpose(1, 2).reshape(batch, sequence, -1)


def plain_self_attention(attn: Attention) -> bool:
    """True for the self-attention this block computes itself: no norms, masks or rescaling inside."""
    return (not attn.is_cross_attention and plain_attention(attn) and attn.norm_q is None and attn.norm_k is None
            and attn.rescale_output_factor == 1.0 and attn.to_out[0].bias is not None
            and (attn.to_out[1].p == 0.0 or not attn.training))


def plain_block(block: torch.nn.Module) -> bool:
    """True for the only ``BasicTransformerBlock`` form this replaces: Stable Diffusion 1's (Zero123's) blocks."""
    return (isinstance(block, BasicTransformerBlock) and block.norm_type == "layer_norm" and block.pos_embed is None
            and not block.only_cross_attention and block.attn2 is not None and plain_attention(block.attn2)
            and block._chunk_size is None
            and not hasattr(block, "fuser") and plain_self_attention(block.attn1)
            and isinstance(block.ff.net[0], GEGLU) and len(block.ff.net) == 3 and block.ff.net[2].bias is not None)


def use_residual_in_gemm_blocks(unet: torch.nn.Module) -> None:
    """Swap every plain ``BasicTransformerBlock`` in ``unet`` for ``ResidualInGemmBlock``; names stay the same."""
    for parent in list(unet.modules()):
        blocks = getattr(parent, "transformer_blocks", None)
        if isinstance(blocks, torch.nn.ModuleList):
            for index, block in enumerate(blocks):
                if plain_block(block):
                    blocks[index] = ResidualInGemmBlock(block)
