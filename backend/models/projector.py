"""What a 3D point sees in the source views: colours, 2D features, visibility and view angles."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sample_source_views(
    points: torch.Tensor, maps: torch.Tensor, projections: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear samples of (V, C, H, W) maps at (N, 3) points -> (N, V, C) and in-image mask (N, V).

    Pixel u maps to 2u/(W-1) - 1 (align_corners=True); depth is clamped at 1e-3 and points
    outside the image read exact zeros, as in the reference projector.
    """
    num_views, _, height, width = maps.shape
    xyz = torch.einsum("vij,nj->vni", projections[:, :, :3], points) + projections[:, None, :, 3]
    z = xyz[..., 2:].clamp(min=1e-3)
    grid = xyz[..., :2] / z * xyz.new_tensor([2.0 / (width - 1), 2.0 / (height - 1)]) - 1.0
    inside = (grid.abs() < 1).all(dim=-1)
    grid = torch.where(inside[..., None], grid, torch.full_like(grid, 2.0))
    sampled = F.grid_sample(maps, grid[:, :, None].to(maps.dtype), align_corners=True)  # (V, C, N, 1)
    return sampled[..., 0].permute(2, 0, 1), inside.T


def ray_differences(points: torch.Tensor, target_dirs: torch.Tensor, source_centres: torch.Tensor) -> torch.Tensor:
    """[unit(d_t - d_v), d_t . d_v] per point and view (N, V, 4); d_v points from the point to source camera v."""
    to_source = source_centres[None] - points[:, None]
    to_source = to_source / (to_source.norm(dim=-1, keepdim=True) + 1e-6)
    target = target_dirs[:, None].expand_as(to_source)
    diff = target - to_source
    direction = diff / diff.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    return torch.cat([direction, (target * to_source).sum(-1, keepdim=True)], dim=-1).detach()
