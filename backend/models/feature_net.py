"""2D feature pyramid of the source views (the reference's ``FeatureNet``) and its fusion to 56 channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .batchnorm import ActivatedBatchNorm2d


class ConvBnLeaky(nn.Module):
    """Conv2d without bias, then InPlaceABN behaviour; keys ``conv.weight`` and ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
        self.bn = ActivatedBatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=True)


class FeatureNet(nn.Module):
    """Three-level FPN over RGB in [0, 1] (no mean/std normalisation), as in the reference."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(ConvBnLeaky(3, 8), ConvBnLeaky(8, 8))
        self.conv1 = nn.Sequential(ConvBnLeaky(8, 16, 5, 2), ConvBnLeaky(16, 16), ConvBnLeaky(16, 16))
        self.conv2 = nn.Sequential(ConvBnLeaky(16, 32, 5, 2), ConvBnLeaky(32, 32), ConvBnLeaky(32, 32))
        self.toplayer = nn.Conv2d(32, 32, 1)
        self.lat1 = nn.Conv2d(16, 32, 1)
        self.lat0 = nn.Conv2d(8, 32, 1)
        self.smooth1 = nn.Conv2d(32, 16, 3, padding=1)
        self.smooth0 = nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(V, 3, H, W) -> [feat2 (V,32,H/4,W/4), feat1 (V,16,H/2,W/2), feat0 (V,8,H,W)]."""
        c0 = self.conv0(images)
        c1 = self.conv1(c0)
        c2 = self.conv2(c1)
        f2 = self.toplayer(c2)
        f1 = _upsample(f2, 2) + self.lat1(c1)
        f0 = _upsample(f1, 2) + self.lat0(c0)
        return [f2, self.smooth1(f1), self.smooth0(f0)]

    def fused(self, images: torch.Tensor) -> torch.Tensor:
        """The 56-channel full-resolution maps that feed the volume and the colour network."""
        f2, f1, f0 = self(images)
        return torch.cat([_upsample(f2, 4), _upsample(f1, 2), f0], dim=1)
