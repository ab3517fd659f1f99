"""Geometry: the compressed feature volume, the sparse 3D CNN and the latent-conditioned SDF MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..sparse import SparseTensor
from .config import ReconstructorConfig
from .feature_net import ConvBnLeaky
from .sparse_costreg import SparseCostRegNet
from .volume import aggregate_views, sample_trilinear


def positional_encoding(points: torch.Tensor, frequencies: int) -> torch.Tensor:
    """[p, sin(p), cos(p), sin(2p), cos(2p), ...] with frequencies 2^k and no pi, as the reference."""
    parts = [points]
    for k in range(frequencies):
        parts += [torch.sin(points * 2.0**k), torch.cos(points * 2.0**k)]
    return torch.cat(parts, dim=-1)


class WeightNormLinear(nn.Module):
    """Linear layer with legacy weight-norm keys ``weight_g`` (out, 1) and ``weight_v`` (out, in)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(weight.norm(dim=1, keepdim=True))
        self.weight_v = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """``rows`` selects output units, so callers that need only the SDF skip the other 127."""
        g, v = self.weight_g[rows], self.weight_v[rows]
        return F.linear(x, g * v / v.norm(dim=1, keepdim=True), self.bias[rows])


class LatentSDFLayer(nn.Module):
    """Three weight-normed layers: PE(p) -> 128, (h || latent) -> 128, (h || latent) -> 128 (SDF = column 0)."""

    def __init__(self, frequencies: int = 6, hidden: int = 128, latent: int = 16) -> None:
        super().__init__()
        self.frequencies = frequencies
        d_in = 3 * (1 + 2 * frequencies)
        d_mid = hidden + latent
        std = math.sqrt(2) / math.sqrt(hidden)
        w0 = torch.zeros(hidden, d_in)
        nn.init.normal_(w0[:, :3], 0.0, std)
        w1 = torch.randn(hidden, d_mid) * std
        w1[:, -latent:] = 0.0
        w2 = torch.randn(hidden, d_mid) * 1e-4 + math.sqrt(math.pi) / math.sqrt(d_mid)
        w2[:, -latent:] = 0.0
        b2 = torch.full((hidden,), -0.5)
        b2[-latent:] = 0.0  # the reference zeroes the last ``latent`` biases after the sphere init
        self.lin0 = WeightNormLinear(w0, torch.zeros(hidden))
        self.lin1 = WeightNormLinear(w1, torch.zeros(hidden))
        self.lin2 = WeightNormLinear(w2, b2)

    def forward(self, points: torch.Tensor, latent: torch.Tensor, sdf_only: bool = False) -> torch.Tensor:
        """(N, 128) outputs, column 0 the SDF; with ``sdf_only`` just that column (N, 1)."""
        h = F.softplus(self.lin0(positional_encoding(points, self.frequencies)), beta=100)
        h = F.softplus(self.lin1(torch.cat([h, latent], dim=-1)), beta=100)
        return self.lin2(torch.cat([h, latent], dim=-1), slice(0, 1) if sdf_only else slice(None))


class SparseSdfNetwork(nn.Module):
    """Keys ``compress_layer.*``, ``sparse_costreg_net.*``, ``sdf_layer.*`` as in ``sdf_network_lod0``."""

    def __init__(self, config: ReconstructorConfig) -> None:
        super().__init__()
        self.config = config
        self.compress_layer = ConvBnLeaky(config.pyramid_channels, config.compressed_channels)
        self.sparse_costreg_net = SparseCostRegNet(2 * config.compressed_channels, config.volume_channels)
        self.sdf_layer = LatentSDFLayer(config.encoding_frequencies, config.sdf_hidden, config.volume_channels)

    def build_volume(self, feature_maps: torch.Tensor, projections: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused (V, 56, H, W) maps and (V, 3, 4) projections -> dense latent (C, R, R, R) and active mask (R, R, R)."""
        res = self.config.volume_resolution
        coords, feats = aggregate_views(self.compress_layer(feature_maps), projections, res, self.config.min_visible_views)
        if coords.shape[0] == 0:
            raise ValueError("no voxel is seen by two or more source views: check the camera poses")
        batch = torch.zeros_like(coords[:, :1])
        out = self.sparse_costreg_net(SparseTensor(feats, torch.cat([coords, batch], dim=1).int()))
        dense = feats.new_zeros(self.config.volume_channels, res, res, res)
        dense[:, coords[:, 0], coords[:, 1], coords[:, 2]] = out.feats.T
        valid = torch.zeros(res, res, res, dtype=torch.bool, device=feats.device)
        valid[coords[:, 0], coords[:, 1], coords[:, 2]] = True
        return dense, valid

    def sdf(self, points: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
        """SDF (N,) at normalised points (the MLP's other 127 outputs are unused by the reference)."""
        return self.sdf_layer(points, sample_trilinear(volume, points), sdf_only=True)[:, 0]
