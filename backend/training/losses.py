"""One-2-3-45's training losses, plus an optional direct SDF loss where the true SDF is known."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.neus_renderer import RenderedRays
from .rays import RayBatch


@dataclass(frozen=True)
class LossWeights:
    """Reference weights (``one2345_lod_train.conf``); ramps are shortened for short runs via the trainer config."""

    color: float = 1.0
    eikonal: float = 0.1
    sparseness: float = 0.02  # multiplied by a linear ramp 0 -> 1
    mask: float = 0.1  # switched on after a warm-up
    depth: float = 0.0  # the released config trains without depth
    sdf: float = 1.0  # direct SDF supervision (procedural objects only)
    sparseness_decay: float = 100.0


def reconstruction_losses(
    rendered: RenderedRays,
    rays: RayBatch,
    random_sdf: torch.Tensor,
    weights: LossWeights,
    sparseness_ramp: float,
    mask_on: bool,
    sdf_pred: torch.Tensor | None = None,
    sdf_true: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Loss terms (already weighted) and their sum under "total"."""
    zero = rendered.color.new_zeros(())
    valid = rendered.color_valid
    color = (rendered.color[valid] - rays.rgb[valid]).abs().mean() if valid.any() else zero
    inside = rendered.inside
    grad_norm = rendered.gradients[inside].norm(dim=-1)
    eikonal = ((grad_norm - 1) ** 2).mean() if inside.any() else zero
    decay = weights.sparseness_decay
    sparse = 0.5 * (torch.exp(-decay * random_sdf.abs()).mean() + torch.exp(-decay * rendered.sdf.abs()).mean())
    background = 1.0 - rays.mask
    mask = (rendered.opacity - rays.mask).abs().mean() if mask_on and background.mean() > 0.02 else zero
    fg = rays.mask > 0
    depth = (rendered.depth[fg] - rays.distance[fg]).abs().mean() if weights.depth > 0 and fg.any() else zero
    sdf = (sdf_pred - sdf_true).abs().mean() if sdf_pred is not None and weights.sdf > 0 else zero
    terms = {
        "color": weights.color * color,
        "eikonal": weights.eikonal * eikonal,
        "sparseness": weights.sparseness * sparseness_ramp * sparse,
        "mask": weights.mask * mask,
        "depth": weights.depth * depth,
        "sdf": weights.sdf * sdf,
    }
    terms["total"] = sum(terms.values())
    return terms
