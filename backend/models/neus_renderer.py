"""NeuS volume rendering of an SDF field (training and novel views; mesh export does not use it).

Follows the reference renderer: 64 stratified samples per ray, 4 rounds of 16 importance
samples placed with a fixed, doubling sharpness (64, 128, 256, 512), then the final pass at
the section mid-points with the learned sharpness and the cosine-annealed "div" alpha. The
background is white. Points outside the active voxels get SDF 100 and no colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

OUTSIDE_SDF = 100.0


class SdfField(Protocol):
    """What the renderer needs from a scene."""

    def valid(self, points: torch.Tensor) -> torch.Tensor: ...

    def sdf(self, points: torch.Tensor) -> torch.Tensor: ...

    def sdf_and_gradient(self, points: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]: ...

    def colors(self, points: torch.Tensor, target_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class RenderedRays:
    color: torch.Tensor  # (R, 3), composited on white
    depth: torch.Tensor  # (R,), distance along the (unit) ray direction
    opacity: torch.Tensor  # (R,), sum of weights
    color_valid: torch.Tensor  # (R,) bool: more than 8 samples seen by two or more views
    sdf: torch.Tensor  # (R, S) SDF at the final samples (OUTSIDE_SDF where invalid)
    gradients: torch.Tensor  # (R, S, 3)
    inside: torch.Tensor  # (R, S) bool: samples inside the active volume


def _masked_sdf(field: SdfField, points: torch.Tensor) -> torch.Tensor:
    flat = points.reshape(-1, 3)
    valid = field.valid(flat)
    sdf = torch.full_like(flat[:, 0], OUTSIDE_SDF)
    if valid.any():
        sdf[valid] = field.sdf(flat[valid])
    return sdf.view(points.shape[:-1])


def _importance_samples(z: torch.Tensor, weights: torch.Tensor, count: int) -> torch.Tensor:
    """Deterministic inverse-CDF sampling of ``count`` depths from per-section weights."""
    pdf = (weights + 1e-5) / (weights + 1e-5).sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
    u = torch.linspace(0.0, 1.0, count, device=z.device).expand(z.shape[0], count).contiguous()
    idx = torch.searchsorted(cdf, u, right=True)
    below, above = (idx - 1).clamp(min=0), idx.clamp(max=cdf.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(1, below), cdf.gather(1, above)
    z_lo, z_hi = z.gather(1, below), z.gather(1, above)
    denom = torch.where(cdf_hi - cdf_lo < 1e-5, torch.ones_like(cdf_hi), cdf_hi - cdf_lo)
    return z_lo + (u - cdf_lo) / denom * (z_hi - z_lo)


def _section_alpha(z: torch.Tensor, sdf: torch.Tensor, inside: torch.Tensor, inv_std: float) -> torch.Tensor:
    """Alpha of each section between consecutive samples, from a slope-limited SDF estimate."""
    dist = z[:, 1:] - z[:, :-1]
    mid = (sdf[:, 1:] + sdf[:, :-1]) / 2
    slope = (sdf[:, 1:] - sdf[:, :-1]) / (dist + 1e-5)
    previous = torch.cat([torch.zeros_like(slope[:, :1]), slope[:, :-1]], dim=-1)
    slope = torch.minimum(slope, previous).clamp(-10.0, 0.0)
    slope = slope * (inside[:, 1:] & inside[:, :-1])
    prev_cdf = torch.sigmoid((mid - slope * dist / 2) * inv_std)
    next_cdf = torch.sigmoid((mid + slope * dist / 2) * inv_std)
    return (prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)


def _transmittance_weights(alpha: torch.Tensor) -> torch.Tensor:
    shifted = torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], dim=-1)
    return alpha * torch.cumprod(shifted, dim=-1)[:, :-1]


def render_rays(
    field: SdfField,
    rays_o: torch.Tensor,
    rays_d: torch.Tensor,
    near: torch.Tensor,
    far: torch.Tensor,
    inv_std: torch.Tensor,
    query_centre: torch.Tensor,
    cos_anneal: float = 1.0,
    perturb: bool = True,
    create_graph: bool = False,
    n_samples: int = 64,
    n_importance: int = 64,
    up_steps: int = 4,
) -> RenderedRays:
    """Render rays (R, 3) in normalised coordinates between per-ray ``near``/``far`` (R, 1)."""
    num_rays = rays_o.shape[0]
    t = torch.linspace(0.0, 1.0, n_samples, device=rays_o.device)
    z = near + (far - near) * t[None]
    sample_dist = ((far - near) / n_samples).mean()
    if perturb:
        z = z + (torch.rand(num_rays, 1, device=z.device) - 0.5) * (far - near) / n_samples

    with torch.no_grad():
        pts = rays_o[:, None] + rays_d[:, None] * z[..., None]
        sdf = _masked_sdf(field, pts)
        for step in range(up_steps):
            inside = sdf < OUTSIDE_SDF
            weights = _transmittance_weights(_section_alpha(z, sdf, inside, 64.0 * 2**step))
            new_z = _importance_samples(z, weights, n_importance // up_steps)
            new_sdf = _masked_sdf(field, rays_o[:, None] + rays_d[:, None] * new_z[..., None])
            z, order = torch.sort(torch.cat([z, new_z], dim=-1), dim=-1)
            sdf = torch.cat([sdf, new_sdf], dim=-1).gather(1, order)

    dists = torch.cat([z[:, 1:] - z[:, :-1], sample_dist.expand(num_rays, 1)], dim=-1)
    mid_z = z + dists / 2
    pts = (rays_o[:, None] + rays_d[:, None] * mid_z[..., None]).reshape(-1, 3)
    dirs = rays_d[:, None].expand(-1, z.shape[1], -1).reshape(-1, 3)
    inside = field.valid(pts)
    sdf = torch.full_like(pts[:, 0], OUTSIDE_SDF)
    grad = torch.zeros_like(pts)
    color = torch.zeros_like(pts)
    seen = torch.zeros_like(inside)
    if inside.any():
        p = pts[inside]
        s, g = field.sdf_and_gradient(p, create_graph=create_graph)
        to_viewer = F.normalize(query_centre[None] - p, dim=-1, eps=1e-6)
        c, v = field.colors(p, to_viewer)
        sdf, grad, color, seen = (
            sdf.index_put((inside.nonzero()[:, 0],), s),
            grad.index_put((inside.nonzero()[:, 0],), g),
            color.index_put((inside.nonzero()[:, 0],), c),
            seen.index_put((inside.nonzero()[:, 0],), v),
        )
    cos = (dirs * grad).sum(-1)
    iter_cos = -(F.relu(-cos * 0.5 + 0.5) * (1.0 - cos_anneal) + F.relu(-cos) * cos_anneal)
    step = iter_cos.clamp(-10.0, 10.0) * dists.reshape(-1) * 0.5
    prev_cdf = torch.sigmoid((sdf - step) * inv_std)
    next_cdf = torch.sigmoid((sdf + step) * inv_std)
    alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0) * inside
    alpha = alpha.view(num_rays, -1)
    weights = _transmittance_weights(alpha)
    opacity = weights.sum(-1)
    rgb = (weights[..., None] * color.view(num_rays, -1, 3)).sum(1) + (1.0 - opacity[:, None])
    color_valid = seen.view(num_rays, -1).sum(-1) > 8
    return RenderedRays(
        rgb, (weights * mid_z).sum(-1), opacity, color_valid,
        sdf.view(num_rays, -1), grad.view(num_rays, -1, 3), inside.view(num_rays, -1),
    )
