"""Posed views -> coloured mesh: the reconstruction half of One-2-3-45 as one pipeline object."""

from __future__ import annotations

import os

import numpy as np
import torch

from .checkpoints import CheckpointInfo, load_reconstructor
from .devices import resolve_device
from .extraction import drop_cavities, marching_cubes, sdf_grid, vertex_colors
from .frame import ReconstructionFrame
from .mesh import ColoredMesh
from .models import ConditionalVolume, One2345Reconstructor
from .models.batchnorm import NormStatistics, normalisation
from .progress import ProgressCallback, no_progress
from .silhouette import HullCarver, SilhouetteField
from .views import ViewSet

DEFAULT_RESOLUTION = 256


def camera_tensors(views: ViewSet, device: torch.device) -> tuple[ReconstructionFrame, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference frame and, in it, source images (V,3,H,W), projections (V,3,4) and camera centres (V,3)."""
    frame = ReconstructionFrame.from_cameras(views.reference_c2w, views.source_c2ws, views.intrinsics, views.near_far, views.image_size)
    projections, centres = frame.source_cameras(views.source_c2ws)
    images = torch.from_numpy(views.source_images).permute(0, 3, 1, 2).contiguous()

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=device)

    return frame, images.to(device), tensor(projections), tensor(centres)


class ReconstructionPipeline:
    """``pipeline(views)`` builds the volume, extracts the surface and colours it.

    ``norm_statistics="batch"`` (default) normalises with the statistics of the current views,
    as the reference does at inference; "running" uses the stored running statistics.
    """

    def __init__(
        self,
        model: One2345Reconstructor,
        device: torch.device | str = "cpu",
        norm_statistics: NormStatistics = "batch",
        info: CheckpointInfo | None = None,
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.norm_statistics = norm_statistics
        self.info = info

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike | None = None, device: str = "auto", norm_statistics: NormStatistics = "batch"
    ) -> "ReconstructionPipeline":
        model, info = load_reconstructor(path)
        return cls(model, resolve_device(device), norm_statistics, info)

    @torch.no_grad()
    def encode(self, views: ViewSet) -> tuple[ReconstructionFrame, ConditionalVolume]:
        frame, images, projections, centres = camera_tensors(views, self.device)
        with normalisation(self.model, self.norm_statistics):
            return frame, self.model.encode(images, projections, centres)

    def __call__(
        self, views: ViewSet, resolution: int = DEFAULT_RESOLUTION, progress: ProgressCallback = no_progress,
        carve: bool | None = None,
    ) -> ColoredMesh:
        """``carve`` intersects the surface with the source views' visual hull (``silhouette``): right for views whose
        silhouettes agree (renders, photos with masks), not for generated ones, whose disagreements cut the object.
        None decides by the views: on unless they are marked generated."""
        if resolution < 16 or resolution > 1024:
            raise ValueError(f"resolution {resolution} is out of range: use 16..1024 (256 is the reference's)")
        progress("volume", 0, 1)
        frame, volume = self.encode(views)
        progress("volume", 1, 1)
        if carve is None:
            carve = not views.generated
        carver = None
        if carve:
            carver = HullCarver(SilhouetteField.from_views(views, frame, self.device), resolution, self.device, progress)
        sdf = sdf_grid(self.model, volume, resolution, progress, carve=carver)
        vertices, faces = drop_cavities(*marching_cubes(sdf))
        progress("marching cubes", 1, 1)
        colors = vertex_colors(self.model, volume, vertices, progress)
        world = frame.to_world(vertices.astype(np.float64)).astype(np.float32)
        return ColoredMesh(world, faces, colors)
