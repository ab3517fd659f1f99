"""Silhouette carving: the visual hull of the source views as a distance field, to intersect with the SDF.

A point that projects outside an object's silhouette in any view cannot be on the object. The network's SDF
does not know this exactly: it leaves thin bulges and fattens flat objects wherever the views' features are
ambiguous. Taking ``max(sdf, hull)`` removes them and keeps every concavity the network found; where the hull
is thinner than the network can resolve, the hull's own surface is kept (``HullCarver``).
``hull`` is the largest signed distance to a silhouette over the views, each measured in pixels on the
image and scaled to volume units at the point's depth (exact at the silhouette, a fair distance near it,
which is where marching cubes reads it). A view that does not see a point (behind the camera or outside
the image) cannot carve it.

Masks are the views' non-white pixels with holes filled, so white patches inside an object stay solid. Every
pixel the object covers even partly is in the mask, so its edge already lies half a pixel outside the true outline
on average; growing the masks further (``margin``) only inflated the surface: on the validation meshes a 1.5 px
margin raised the mean Chamfer distance from 0.0090 to 0.0118 (BENCHMARKS.md), so there is none by default.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from .extraction import field_grid, occupied_box
from .frame import ReconstructionFrame
from .progress import ProgressCallback, no_progress
from .views import ViewSet

WHITE = 250 / 255  # a pixel is background only when every channel is at least this bright
MARGIN_PX = 0.0
POINT_CHUNK = 1 << 18
OUTSIDE = 1.0  # strict hull value where some view does not see the point (volume units: half the volume)
THIN_RADIUS = 0.02  # volume units: about one voxel of the network's 96^3 volume (2 / 96)
FAR_VOXELS = 1e4  # distance to the thin parts where there are none near
THIN_GRID = 256  # finer extraction grids look thin parts up on this one, which bounds the memory they take


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

    @classmethod
    def from_views(cls, views: ViewSet, frame: ReconstructionFrame, device: torch.device | str = "cpu") -> SilhouetteField:
        """The hull of ``views``' source silhouettes in ``frame``'s volume coordinates, as reconstruction carves with it."""
        projections, _ = frame.source_cameras(views.source_c2ws)
        focal = float(frame.intrinsics[0, 0] + frame.intrinsics[1, 1]) / 2
        return cls(foreground_masks(views.source_images), torch.as_tensor(projections, dtype=torch.float32, device=device), focal)

    def __call__(self, points: torch.Tensor, strict: bool = False) -> torch.Tensor:
        """``strict``: a point that some view does not see is outside (``OUTSIDE``), not left to the views that see it."""
        if len(self.projections) == 0:
            return torch.full(points.shape[:1], OUTSIDE if strict else -torch.inf, device=points.device)
        return torch.cat([self._chunk(part, strict) for part in points.split(POINT_CHUNK)])

    def _chunk(self, points: torch.Tensor, strict: bool) -> torch.Tensor:
        uvw = torch.einsum("vij,nj->vni", self.projections[:, :, :3], points.float()) + self.projections[:, None, :, 3]
        depth = uvw[..., 2]
        pixels = uvw[..., :2] / depth.clamp(min=1e-6)[..., None]
        grid = pixels * self.scale - 1.0  # align_corners=True: -1 and 1 are the outer pixels' centres
        pixel_distance = F.grid_sample(self.distances, grid[:, None], mode="bilinear", align_corners=True)[:, 0, 0]
        seen = (depth > 0) & (grid.abs() <= 1.0).all(dim=-1)
        distance = torch.where(seen, pixel_distance * depth / self.focal, torch.full_like(depth, -torch.inf)).amax(dim=0)
        return torch.where(seen.all(dim=0), distance, OUTSIDE) if strict else distance


def thin_part_distance(inside: np.ndarray, radius: float) -> np.ndarray:
    """Signed distance in voxels (negative inside) to the thin parts of a solid: those no ball of ``radius`` voxels
    inside it covers (the solid minus its morphological opening). Far from them: ``FAR_VOXELS``."""
    result = np.full(inside.shape, FAR_VOXELS, np.float32)
    box = occupied_box(inside, int(np.ceil(radius)) + 2)
    if box is None:
        return result
    solid = inside[box]
    core = ndimage.distance_transform_edt(solid) > radius  # centres of the balls that fit
    thin = solid & ~(ndimage.distance_transform_edt(~core) <= radius) if core.any() else solid
    if thin.any():
        result[box] = ndimage.distance_transform_edt(~thin) - ndimage.distance_transform_edt(thin)
    return result


class HullCarver:
    """``carver(points, sdf)`` -> max(hull, min(sdf, thin)): the SDF cut to the visual hull, the hull's thin parts kept.

    The network's 96^3 volume cannot resolve parts thinner than about one of its voxels (a flat sheet, a leaf),
    so it leaves them out, and intersecting with the hull cannot bring them back. Where the hull itself is that
    thin there is no room for a concavity the network could have found, so the hull is the better surface there.
    Thin parts are found on the extraction grid (at most ``THIN_GRID``^3): the hull's interior as every view sees it,
    minus its opening with a ball of ``THIN_RADIUS``; ``thin`` is the signed distance to them, read at the nearest
    grid point. Like any opening this also counts slivers at the hull's sharp edges as thin, where the hull is as
    good a guess as the network's.
    """

    def __init__(self, field: SilhouetteField, resolution: int, device: torch.device, progress: ProgressCallback = no_progress) -> None:
        self.field = field
        self.resolution = min(resolution, THIN_GRID)
        strict = field_grid(lambda points: field(points, strict=True), self.resolution, device, progress, "hull").cpu().numpy()
        voxel = 2.0 / (self.resolution - 1)
        self.thin = torch.from_numpy(thin_part_distance(strict < 0, THIN_RADIUS / voxel) * voxel).to(device)

    def __call__(self, points: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
        index = ((points + 1.0) * ((self.resolution - 1) / 2.0)).round().long().clamp(0, self.resolution - 1)
        i, j, k = index.unbind(dim=1)
        return torch.maximum(self.field(points), torch.minimum(sdf, self.thin[i, j, k]))
