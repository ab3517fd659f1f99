"""Nearest ×2 upsampling that keeps a channels-last tensor channels-last, for the compiled UNet.

diffusers' ``Upsample2D`` makes any batch of 64 or more contiguous before interpolating, working around an
old eager CUDA kernel bug. In a channels-last UNet that turns the stage-2 batch (32 views × 2 guidance
branches = 64 rows) into the other memory layout at every up-block, and Inductor then spends a transposing
copy on each side of the upsampling. Compiled, interpolation is Inductor's own index arithmetic, so the
workaround guards nothing; this module computes the same values without it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D


class LayoutKeepingUpsample(torch.nn.Module):
    """``Upsample2D``'s nearest interpolation and convolution (the same ``conv`` weights), layout left alone."""

    def __init__(self, upsample: Upsample2D) -> None:
        super().__init__()
        self.conv = upsample.conv

    def forward(self, hidden_states: torch.Tensor, output_size: tuple[int, int] | None = None, *args: Any,
                **kwargs: Any) -> torch.Tensor:
        if output_size is None:
            hidden_states = F.interpolate(hidden_states, scale_factor=2.0, mode="nearest")
        else:
            hidden_states = F.interpolate(hidden_states, size=output_size, mode="nearest")
        return self.conv(hidden_states)


def plain_upsampler(module: torch.nn.Module) -> bool:
    """True for the only ``Upsample2D`` kind this replaces: interpolation then a convolution named ``conv``."""
    return (isinstance(module, Upsample2D) and module.use_conv and not module.use_conv_transpose and module.interpolate
            and module.norm is None and module.name == "conv")


def keep_layout_when_upsampling(unet: torch.nn.Module) -> None:
    """Swap each up-block's plain ``Upsample2D`` for ``LayoutKeepingUpsample``; parameter names stay the same."""
    for block in getattr(unet, "up_blocks", ()):
        upsamplers = getattr(block, "upsamplers", None)
        if upsamplers is None:
            continue
        for index, upsampler in enumerate(upsamplers):
            if plain_upsampler(upsampler):
                upsamplers[index] = LayoutKeepingUpsample(upsampler)
