"""Silhouette carving: the visual hull of the source views as a distance field, to intersect with the SDF.

A point that projects outside an object's silhouette in any view cannot be on the object. The network's SDF
does not know this exactly: it leaves thin bulges and fattens flat objects wherever the views' features are
ambiguous. Taking ``max(sdf, hull)`` removes them and keeps every concavity the network found.
``hull`` is the largest signed distance to a silhouette over the views, each measured in pixels on the
image and scaled to volume units at the point's depth (exact at the silhouette, a fair distance near it,
which is where marching cubes reads it). A view that does not see a point (behind the camera or outside
the image) cannot carve it.

Masks are the views' non-white pixels with holes filled, so white patches inside an object stay solid,
grown by ``margin`` pixels so anti-aliased edges and mask noise never eat into the object.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

WHITE = 250 / 255  # a pixel is background only when every channel is at least this bright
MARGIN_PX = 1.5
POINT_CHUNK = 1 << 18


def foreground_masks(images: np.ndarray) -> np.ndarray:
    """(V, H, W, 3) float images in [0, 1] on white -> (V, H, W) bool silhouettes, holes filled."""
    masks = (np.asarray(images) < WHITE).any(axis=-1)
    return np.stack([ndimage.binary_fill_holes(mask) for mask in masks])


def signed_pixel_distance(mask: np.ndarray) -> np.ndarray:
    """Distance in pixels from each pixel centre to the silhouette's edge: positive outside, negative inside."""
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    return (outside - inside).astype(np.float32)


class SilhouetteField:
    """``field(points)`` -> (N,) signed distance to the visual hull in volume units (positive outside)."""

    def __init__(self, masks: np.ndarray, projections: torch.Tensor, focal: float, margin_px: float = MARGIN_PX) -> None:
        """``projections`` (V, 3, 4) take volume points to pixels (u = column, v = row, pixel centres at
        integers); ``focal`` in pixels turns a pixel distance at depth w into w / focal volume units."""
        device = projections.device
        keep = [i for i, mask in enumerate(masks) if mask.any()]  # an empty view (a failed render) carves nothing
        distances = np.zeros((0, *masks.shape[1:]), np.float32)
        if keep:
            distances = np.stack([signed_pixel_distance(masks[i]) for i in keep]) - margin_px
        self.distances = torch.from_numpy(distances).to(device)[:, None]  # (V, 1, H, W)
        self.projections = projections[keep].float()
        self.focal = float(focal)
        height, width = masks.shape[1:]
        self.scale = torch.tensor([2.0 / (width - 1), 2.0 / (height - 1)], device=device)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        if len(self.projections) == 0:
            return torch.full(points.shape[:1], -torch.inf, device=points.device)
        return torch.cat([self._chunk(part) for part in points.split(POINT_CHUNK)])

    def _chunk(self, points: torch.Tensor) -> torch.Tensor:
        uvw = torch.einsum("vij,nj->vni", self.projections[:, :, :3], points.float()) + self.projections[:, None, :, 3]
        depth = uvw[..., 2]
        pixels = uvw[..., :2] / depth.clamp(min=1e-6)[..., None]
        grid = pixels * self.scale - 1.0  # align_corners=True: -1 and 1 are the outer pixels' centres
        pixel_distance = F.grid_sample(self.distances, grid[:, None], mode="bilinear", align_corners=True)[:, 0, 0]
        seen = (depth > 0) & (grid.abs() <= 1.0).all(dim=-1)
        distance = torch.where(seen, pixel_distance * depth / self.focal, torch.full_like(depth, -torch.inf))
        return distance.amax(dim=0)
