"""The multi-view feature volume: back-projection of per-view features onto the voxel grid.

Every voxel of the ``res^3`` grid over [-1, 1]^3 is projected into every source view.
Features are sampled in every view, even where the voxel is not visible (behind-camera
points project mirrored and still contribute, as in the reference), but the mean and
variance divide by the count of views that do see it. Voxels seen by more than
``min_visible_views`` views form the sparse set that enters the 3D CNN, with features
[variance || mean].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def voxel_coordinates(resolution: int, device: torch.device) -> torch.Tensor:
    """All integer voxel coordinates (res^3, 3), x slowest, z fastest (the (X, Y, Z) tensor order)."""
    r = torch.arange(resolution, device=device)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)


def voxel_to_normalised(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Voxel i sits at -1 + 2i/(res-1): both ends of [-1, 1] are voxel centres."""
    return coords.float() * (2.0 / (resolution - 1)) - 1.0


def project(points: torch.Tensor, projection: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Homogeneous pixel projection of (N, 3) points with a (3, 4) matrix -> (x, y, z) columns and z."""
    xyz = points @ projection[:, :3].T + projection[:, 3]
    return xyz, xyz[:, 2]


def aggregate_views(
    feature_maps: torch.Tensor,
    projections: torch.Tensor,
    resolution: int,
    min_visible_views: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-project (V, C, H, W) maps onto the grid -> active voxel coords (N, 3) and features (N, 2C)."""
    num_views, channels, height, width = feature_maps.shape
    coords = voxel_coordinates(resolution, feature_maps.device)
    points = voxel_to_normalised(coords, resolution)
    total = points.new_zeros(channels, points.shape[0])
    total_sq = torch.zeros_like(total)
    visible = torch.zeros(points.shape[0], device=points.device, dtype=torch.int32)
    scale = points.new_tensor([2.0 / (width - 1), 2.0 / (height - 1)])
    for v in range(num_views):
        xyz, z = project(points, projections[v])
        z = torch.where(z >= 0, z.clamp(min=1e-6), z)
        grid = xyz[:, :2] / z[:, None] * scale - 1.0
        visible += ((grid.abs() <= 1).all(dim=1) & (z > 0)).int()
        sampled = F.grid_sample(feature_maps[v : v + 1], grid.view(1, 1, -1, 2), align_corners=True).view(channels, -1)
        total = total + sampled
        total_sq = total_sq + sampled * sampled
    count = visible.to(total.dtype) + 1e-5
    mean = total / count
    variance = total_sq / count - mean * mean
    active = visible > min_visible_views
    return coords[active], torch.cat([variance, mean], dim=0)[:, active].T.contiguous()


def sample_trilinear(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear sample of a (C, X, Y, Z) volume at normalised (N, 3) points -> (N, C), reference rules.

    As in the reference sampler, a point whose continuous index is <= 0 or >= size on any axis
    gives 0 (so the exact -1 face returns 0) and corner indices are clamped (border values just
    past +1). When gradients through ``points`` are recorded, gathers are used because the loss
    needs second derivatives, which ``grid_sample`` lacks; otherwise ``grid_sample`` (20x faster).
    """
    sizes = volume.shape[1:]
    index = (points + 1) / 2 * points.new_tensor([s - 1 for s in sizes])
    inside = ((index > 0) & (index < points.new_tensor(list(sizes)))).all(dim=1, keepdim=True)
    if not (torch.is_grad_enabled() and points.requires_grad):
        return sample_grid(volume, points, padding_mode="border") * inside
    rows = volume.reshape(volume.shape[0], -1).T.contiguous()
    low = index.detach().floor()
    frac = index - low
    low = low.long()
    strides = (sizes[1] * sizes[2], sizes[2], 1)
    out = points.new_zeros(points.shape[0], volume.shape[0])
    for corner in range(8):
        weight = torch.ones_like(frac[:, 0])
        flat_index = torch.zeros_like(low[:, 0])
        for axis in range(3):
            bit = (corner >> (2 - axis)) & 1
            weight = weight * (frac[:, axis] if bit else 1 - frac[:, axis])
            flat_index = flat_index + (low[:, axis] + bit).clamp(0, sizes[axis] - 1) * strides[axis]
        out = out + rows[flat_index] * weight[:, None]
    return out * inside


def sample_grid(
    volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear", align_corners: bool = True, padding_mode: str = "zeros"
) -> torch.Tensor:
    """PyTorch ``grid_sample`` of a (C, X, Y, Z) volume at normalised (N, 3) points -> (N, C).

    ``grid_sample`` reads the last grid coordinate along the first spatial axis, hence (z, y, x).
    """
    grid = points[:, [2, 1, 0]].view(1, 1, 1, -1, 3)
    out = F.grid_sample(volume[None], grid.to(volume.dtype), mode=mode, align_corners=align_corners, padding_mode=padding_mode)
    return out.view(volume.shape[0], -1).T
