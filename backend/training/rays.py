"""Rays through pixels of the target view, in the normalised volume frame."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .samples import TrainingSample


@dataclass
class RayBatch:
    origins: torch.Tensor  # (R, 3)
    directions: torch.Tensor  # (R, 3) unit
    near: torch.Tensor  # (R, 1)
    far: torch.Tensor  # (R, 1)
    rgb: torch.Tensor  # (R, 3)
    mask: torch.Tensor  # (R,) float
    distance: torch.Tensor  # (R,) ground-truth distance along the ray, 0 on background


def sample_rays(sample: TrainingSample, count: int, generator: torch.Generator, foreground_share: float = 0.75) -> RayBatch:
    """A quarter uniform over the image and the rest on the object, as the reference's importance sampling.

    Pixel (u, v) is the ray through coordinate (u, v) (pixel centres at integers, as the rasterizer).
    near/far follow the reference: 0.95 (d - 1) with d - 1 clipped at 0.02, and 1.05 (d + 1).
    """
    device = sample.target_rgb.device
    height, width = sample.target_mask.shape
    n_fg = int(count * foreground_share) if sample.target_mask.any() else 0
    uniform = torch.randint(height * width, (count - n_fg,), device=device, generator=generator)
    fg_pixels = sample.target_mask.view(-1).nonzero()[:, 0]
    fg = fg_pixels[torch.randint(len(fg_pixels), (n_fg,), device=device, generator=generator)] if n_fg else uniform[:0]
    flat = torch.cat([uniform, fg])
    v, u = (flat // width).float(), (flat % width).float()
    k = sample.intrinsics
    cam = torch.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], torch.ones_like(u)], dim=1)
    rotation, origin = sample.target_c2w[:3, :3], sample.target_c2w[:3, 3]
    directions = cam @ rotation.T
    scale = directions.norm(dim=1)
    d = origin.norm()
    near = (0.95 * (d - 1).clamp(min=0.02)).expand(len(flat), 1)
    far = (1.05 * (d + 1)).expand(len(flat), 1)
    return RayBatch(
        origins=origin.expand(len(flat), 3),
        directions=directions / scale[:, None],
        near=near,
        far=far,
        rgb=sample.target_rgb.view(-1, 3)[flat],
        mask=sample.target_mask.view(-1)[flat].float(),
        distance=sample.target_depth.view(-1)[flat] * scale,
    )
