"""One sample's training loss as a module, so DistributedDataParallel can wrap the whole forward pass."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models import One2345Reconstructor, VolumeField
from ..models.neus_renderer import render_rays
from .losses import LossWeights, reconstruction_losses
from .rays import sample_rays
from .samples import TrainingSample


@dataclass(frozen=True)
class ScheduleState:
    """The step-dependent switches of the reference schedule, evaluated for one step."""

    cos_anneal: float
    sparseness_ramp: float
    mask_on: bool


class TrainingObjective(nn.Module):
    """Renders rays of the sample's target view through the reconstructed volume and returns the weighted losses."""

    def __init__(self, model: One2345Reconstructor, weights: LossWeights, rays: int, random_sdf_points: int) -> None:
        super().__init__()
        self.model = model
        self.weights = weights
        self.rays = rays
        self.random_sdf_points = random_sdf_points

    def forward(self, sample: TrainingSample, schedule: ScheduleState) -> dict[str, torch.Tensor]:
        """Loss terms under their names, their sum under "total", and detached diagnostics (``psnr``, ``fg_opacity``)."""
        device = sample.images.device
        torch.manual_seed(sample.seed)
        generator = torch.Generator(device=device).manual_seed(sample.seed)
        rays = sample_rays(sample, self.rays, generator)
        volume = self.model.encode(sample.images, sample.projections, sample.centres)
        rendered = render_rays(
            VolumeField(self.model, volume), rays.origins, rays.directions, rays.near, rays.far,
            self.model.variance_network_lod0.inv_std(), sample.target_c2w[:3, 3], cos_anneal=schedule.cos_anneal,
            create_graph=True,
        )
        random_points = torch.rand(self.random_sdf_points, 3, device=device, generator=generator) * 2 - 1
        sdf_pred = self.model.sdf(sample.sdf_points, volume) if sample.sdf_points is not None else None
        losses = reconstruction_losses(
            rendered, rays, self.model.sdf(random_points, volume), self.weights, sparseness_ramp=schedule.sparseness_ramp,
            mask_on=schedule.mask_on, sdf_pred=sdf_pred, sdf_true=sample.sdf_values,
        )
        fg = rays.mask > 0
        losses["psnr"] = -10 * torch.log10(((rendered.color.detach() - rays.rgb) ** 2).mean())
        losses["fg_opacity"] = rendered.opacity.detach()[fg].mean() if fg.any() else rendered.opacity.new_zeros(())
        return losses
