"""Feature-volume semantics (visible-view counting, [variance || mean]) and the reference trilinear sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from backend.models.volume import aggregate_views, sample_trilinear, voxel_to_normalised


def look_at_projection(eye: list[float], focal: float = 10.0, size: int = 9) -> torch.Tensor:
    """K [R|t] of an OpenCV camera at ``eye`` looking at the origin (y down)."""
    eye_t = torch.tensor(eye, dtype=torch.float64)
    z = -eye_t / eye_t.norm()
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64) if abs(z[2]) < 0.9 else torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.linalg.cross(z, up)
    x = x / x.norm()
    y = torch.linalg.cross(z, x)
    rot = torch.stack([x, y, z])
    k = torch.tensor([[focal, 0, (size - 1) / 2], [0, focal, (size - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    return k @ torch.cat([rot, -(rot @ eye_t)[:, None]], dim=1)


def test_aggregation_follows_reference_rules() -> None:
    """Sums over ALL views (behind-camera points still sample), divided by the count of views that see the voxel."""
    torch.manual_seed(0)
    size, res = 9, 6
    projections = torch.stack([look_at_projection(e, size=size) for e in ([2.5, 0, 0], [0, -2.5, 0], [0, 0.3, 2.5])]).float()
    maps = torch.rand(3, 2, size, size)
    coords, feats = aggregate_views(maps, projections, res, 1)

    grid = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    points = voxel_to_normalised(grid, res)
    total = torch.zeros(points.shape[0], 2)
    total_sq = torch.zeros_like(total)
    seen = torch.zeros(points.shape[0])
    for v in range(3):
        xyz = points @ projections[v, :, :3].T + projections[v, :, 3]
        z = torch.where(xyz[:, 2] >= 0, xyz[:, 2].clamp(min=1e-6), xyz[:, 2])
        uv = xyz[:, :2] / z[:, None] / (size - 1) * 2 - 1
        seen += ((uv.abs() <= 1).all(1) & (z > 0)).float()
        f = F.grid_sample(maps[v : v + 1], uv.view(1, 1, -1, 2), align_corners=True).view(2, -1).T
        total += f
        total_sq += f * f
    mean = total / (seen[:, None] + 1e-5)
    var = total_sq / (seen[:, None] + 1e-5) - mean**2
    active = seen > 1
    assert 0 < active.sum() < points.shape[0]  # both kinds of voxel occur
    torch.testing.assert_close(coords, grid[active])
    torch.testing.assert_close(feats, torch.cat([var, mean], dim=1)[active])


def test_trilinear_sampler_matches_grid_sample_inside_and_zero_on_lower_face() -> None:
    torch.manual_seed(0)
    volume = torch.randn(3, 5, 6, 7, dtype=torch.float64)
    points = torch.rand(500, 3, dtype=torch.float64) * 1.98 - 0.99
    expected = F.grid_sample(volume[None], points[:, [2, 1, 0]].view(1, 1, 1, -1, 3), align_corners=True).view(3, -1).T
    torch.testing.assert_close(sample_trilinear(volume, points), expected)
    # gather path (used when second derivatives are needed) agrees and is twice differentiable
    p = points.clone().requires_grad_(True)
    out = sample_trilinear(volume, p)
    torch.testing.assert_close(out, expected)
    (g,) = torch.autograd.grad(out.sum(), p, create_graph=True)
    assert g.requires_grad
    # the reference returns 0 on the exact -1 face
    face = points.clone()
    face[:, 1] = -1.0
    assert sample_trilinear(volume, face).abs().max() == 0
    assert sample_trilinear(volume, face.clone().requires_grad_(True)).abs().max() == 0
