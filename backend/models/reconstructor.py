"""The whole trainable reconstruction module, with the official checkpoint's module names."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import ReconstructorConfig
from .feature_net import FeatureNet
from .projector import ray_differences, sample_source_views
from .rendering_network import GeneralRenderingNetwork, SingleVarianceNetwork
from .sdf_network import SparseSdfNetwork
from .volume import sample_grid


@dataclass
class ConditionalVolume:
    """Everything a query needs about one object: the latent volume and the source views it came from."""

    latent: torch.Tensor  # (C, R, R, R), zeros outside the active set; axes (X, Y, Z)
    valid: torch.Tensor  # (R, R, R) bool, the active voxels
    colors: torch.Tensor  # (V, 3, H, W) source images in [0, 1]
    feature_maps: torch.Tensor  # (V, 56, H, W) fused FeatureNet maps
    projections: torch.Tensor  # (V, 3, 4) normalised points -> pixels
    centres: torch.Tensor  # (V, 3) source camera centres in normalised coordinates


class One2345Reconstructor(nn.Module):
    """State-dict prefixes equal the official checkpoint's top-level keys (``sdf_network_lod0`` etc.)."""

    def __init__(self, config: ReconstructorConfig | None = None) -> None:
        super().__init__()
        self.config = config or ReconstructorConfig()
        self.pyramid_feature_network = FeatureNet()
        self.sdf_network_lod0 = SparseSdfNetwork(self.config)
        self.rendering_network_lod0 = GeneralRenderingNetwork(self.config.volume_channels, self.config.pyramid_channels)
        self.variance_network_lod0 = SingleVarianceNetwork()

    def encode(self, images: torch.Tensor, projections: torch.Tensor, centres: torch.Tensor) -> ConditionalVolume:
        """Source images (V, 3, H, W) in [0, 1] with their cameras -> the conditional volume."""
        feature_maps = self.pyramid_feature_network.fused(images)
        latent, valid = self.sdf_network_lod0.build_volume(feature_maps, projections)
        return ConditionalVolume(latent, valid, images, feature_maps, projections, centres)

    def sdf(self, points: torch.Tensor, volume: ConditionalVolume) -> torch.Tensor:
        return self.sdf_network_lod0.sdf(points, volume.latent)

    def sdf_and_gradient(
        self, points: torch.Tensor, volume: ConditionalVolume, create_graph: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """SDF and its spatial gradient (normals; the eikonal loss passes ``create_graph=True``)."""
        with torch.enable_grad():
            if not points.requires_grad:
                points = points.detach().requires_grad_(True)
            sdf = self.sdf(points, volume)
            (grad,) = torch.autograd.grad(sdf.sum(), points, create_graph=create_graph)
        return sdf, grad

    def point_visibility(self, points: torch.Tensor, volume: ConditionalVolume) -> torch.Tensor:
        """Inside the cube and near an active voxel: only such points take colour from the views."""
        inside = (points.abs() < 1).all(dim=1)
        near_active = sample_grid(volume.valid[None].to(points.dtype), points)[:, 0] > 0
        return inside & near_active

    def colors(
        self, points: torch.Tensor, target_dirs: torch.Tensor, volume: ConditionalVolume
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Blended colour (N, 3) and "seen by two views" (N,) at points looked at along ``target_dirs``.

        ``target_dirs`` is the unit vector from the point towards the viewer, or the surface
        normal for view-independent vertex colours.
        """
        maps = torch.cat([volume.colors, volume.feature_maps], dim=1)
        rgb_feat, in_image = sample_source_views(points, maps, volume.projections)
        mask = in_image & self.point_visibility(points, volume)[:, None]
        geometry = sample_grid(volume.latent, points)
        ray_diff = ray_differences(points, target_dirs, volume.centres)
        return self.rendering_network_lod0(geometry, rgb_feat, ray_diff, mask)


class VolumeField:
    """One object's SDF field as the NeuS renderer sees it: the model bound to a conditional volume."""

    def __init__(self, model: One2345Reconstructor, volume: ConditionalVolume) -> None:
        self.model = model
        self.volume = volume

    def valid(self, points: torch.Tensor) -> torch.Tensor:
        """Nearest lookup of the active mask (align_corners=False, as the reference renderer does)."""
        mask = self.volume.valid[None].to(points.dtype)
        return sample_grid(mask, points, mode="nearest", align_corners=False)[:, 0] > 0

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.model.sdf(points, self.volume)

    def sdf_and_gradient(self, points: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.sdf_and_gradient(points, self.volume, create_graph)

    def colors(self, points: torch.Tensor, target_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.colors(points, target_dirs, self.volume)
