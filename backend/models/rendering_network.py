"""Colour by blending source pixels (the reference's IBRNet-style ``GeneralRenderingNetwork``).

The network never regresses RGB: it predicts per-view weights and returns a convex
combination of the colours the point projects to in the source views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _kaiming(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight)
        nn.init.zeros_(module.bias)


def weighted_mean_variance(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (x * weight).sum(dim=1, keepdim=True)
    return mean, (weight * (x - mean) ** 2).sum(dim=1, keepdim=True)


class GeneralRenderingNetwork(nn.Module):
    """Inputs per point and view: [rgb 3 || features 56], ray difference (4) and a visibility mask."""

    def __init__(self, geometry_channels: int = 16, feature_channels: int = 56) -> None:
        super().__init__()
        per_view = feature_channels + 3
        self.s = nn.Parameter(torch.tensor(0.2))
        self.ray_dir_fc = nn.Sequential(nn.Linear(4, 16), nn.ELU(), nn.Linear(16, per_view), nn.ELU())
        self.base_fc = nn.Sequential(nn.Linear(per_view * 3 + geometry_channels, 64), nn.ELU(), nn.Linear(64, 32), nn.ELU())
        self.vis_fc = nn.Sequential(nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 33), nn.ELU())
        self.vis_fc2 = nn.Sequential(nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 1), nn.Sigmoid())
        self.rgb_fc = nn.Sequential(nn.Linear(32 + 1 + 4, 16), nn.ELU(), nn.Linear(16, 8), nn.ELU(), nn.Linear(8, 1))
        for block in (self.base_fc, self.vis_fc, self.vis_fc2, self.rgb_fc):
            block.apply(_kaiming)

    def forward(
        self, geometry: torch.Tensor, rgb_feat: torch.Tensor, ray_diff: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """geometry (N, 16), rgb_feat (N, V, 59), ray_diff (N, V, 4), mask (N, V) -> rgb (N, 3), seen-by-2 (N,)."""
        num_views = rgb_feat.shape[1]
        mask = mask[..., None].to(rgb_feat.dtype)
        rgb_in = rgb_feat[..., :3]
        rgb_feat = rgb_feat + self.ray_dir_fc(ray_diff)
        closeness = torch.exp(self.s.abs() * (ray_diff[..., 3:] - 1))
        weight = (closeness - closeness.min(dim=1, keepdim=True).values) * mask
        weight = weight / (weight.sum(dim=1, keepdim=True) + 1e-8)
        mean, var = weighted_mean_variance(rgb_feat, weight)
        pooled = torch.cat([mean, var], dim=-1).expand(-1, num_views, -1)
        x = torch.cat([geometry[:, None].expand(-1, num_views, -1), pooled, rgb_feat], dim=-1)
        x = self.base_fc(x)
        residual, vis = self.vis_fc(x * weight).split([32, 1], dim=-1)
        vis = torch.sigmoid(vis) * mask
        x = x + residual
        vis = self.vis_fc2(x * vis) * mask
        logits = self.rgb_fc(torch.cat([x, vis, ray_diff], dim=-1)).masked_fill(mask == 0, -1e9)
        rgb = (rgb_in * F.softmax(logits, dim=1)).sum(dim=1)
        return rgb, mask[..., 0].sum(dim=1) >= 2


class SingleVarianceNetwork(nn.Module):
    """NeuS's learnable sharpness: inverse standard deviation s = exp(10 * variance)."""

    def __init__(self, init: float = 0.2) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(init))

    def inv_std(self) -> torch.Tensor:
        return torch.exp(self.variance * 10.0).clamp(1e-6, 1e6)
