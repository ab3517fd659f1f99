"""Group normalisation from per-channel statistics, so the compiled channels-last UNet reads memory in order.

Inductor reduces ``group_norm`` one (image, group) at a time. In a channels-last tensor a group's channels are
a short run (10 of 320 channels) in every pixel's row, so each reduction gathers strided pieces. Taking the
mean and variance of each channel over the pixels instead reads whole contiguous rows, and the group's
statistics follow exactly from its channels' (equal counts: the group mean is the mean of channel means, the
group variance the mean of channel variances plus the variance of channel means). On an H100 that took
Inductor's normalisation and elementwise kernels from 7.08 to 6.67 ms per 64-row stage-2 UNet call; at the
16-row stage-1 batch Inductor's own reduction was as fast or slightly faster, so small batches keep it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MIN_IMAGES = 32  # smaller batches normalise with F.group_norm (BENCHMARKS.md, "Group norms from channel statistics")


class ChannelStatsGroupNorm(torch.nn.GroupNorm):
    """``GroupNorm`` (same parameters, same result up to float rounding) with statistics taken per channel first."""

    @classmethod
    def like(cls, norm: torch.nn.GroupNorm) -> ChannelStatsGroupNorm:
        """This kind of norm holding ``norm``'s own parameters."""
        replacement = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta")
        replacement.weight, replacement.bias = norm.weight, norm.bias
        return replacement

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 3 or x.shape[0] < MIN_IMAGES:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        batch, channels = x.shape[:2]
        per_group = channels // self.num_groups
        values = x.float()
        variance, mean = torch.var_mean(values, dim=tuple(range(2, x.ndim)), correction=0)
        variance = variance.view(batch, self.num_groups, per_group)
        mean = mean.view(batch, self.num_groups, per_group)
        group_mean = mean.mean(dim=2, keepdim=True)
        group_variance = (variance + (mean - group_mean).square()).mean(dim=2, keepdim=True)
        scale = torch.rsqrt(group_variance + self.eps).expand(-1, -1, per_group).reshape(batch, channels)
        shift = -group_mean.expand(-1, -1, per_group).reshape(batch, channels) * scale
        if self.affine:
            scale, shift = scale * self.weight, shift * self.weight + self.bias
        spread = (batch, channels) + (1,) * (x.ndim - 2)
        return (values * scale.view(spread) + shift.view(spread)).to(x.dtype)


def use_channel_stats_group_norm(module: torch.nn.Module) -> None:
    """Swap every plain ``torch.nn.GroupNorm`` inside ``module`` for ``ChannelStatsGroupNorm``; names stay the same."""
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is torch.nn.GroupNorm:
                setattr(parent, name, ChannelStatsGroupNorm.like(child))
