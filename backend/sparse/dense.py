"""Masked dense emulation of the sparse convs, for bounded grids such as One-2-3-45's 96³ level.

Features are scattered into a zero grid over the bounding box, convolved with F.conv3d /
F.conv_transpose3d and read back only at the output sites, so between layers they stay sparse rows
(inactive sites contribute nothing; BatchNorm sees active rows only). Exact up to float rounding; on
CUDA, cuDNN convolutions use TF32 unless ``torch.backends.cudnn.allow_tf32 = False`` (≈ 5e-4 relative
instead of ≈ 5e-7 on an H100).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class DenseGrid:
    """Bounding box of a fine level (tensor stride ``stride``) and of the stride-2 level above it.

    The origin is a multiple of 2·stride so coarse sites fall on every second fine cell; the extents are
    even and include one spare high plane so the "no upper bound" stride-2 output plane exists, and so that
    conv_transpose3d maps the coarse grid (half the extent) exactly back onto the fine one.
    """

    origin: tuple[int, int, int]
    low: tuple[int, int, int]  # per-axis minimum fine coordinate, the lower bound of stride-2 outputs
    batch0: int
    shape: tuple[int, int, int, int]  # (batches, X, Y, Z) of the fine level
    stride: int

    @classmethod
    def around(cls, coords: torch.Tensor, stride: int) -> DenseGrid:
        lo, hi = torch.stack([coords.amin(0), coords.amax(0)]).tolist()
        origin = tuple(v // (2 * stride) * 2 * stride for v in lo[:3])
        extent = tuple(((h - o) // stride + 3) // 2 * 2 for h, o in zip(hi[:3], origin))
        return cls(origin, tuple(lo[:3]), lo[3], (hi[3] - lo[3] + 1, *extent), stride)

    @property
    def cells(self) -> int:
        b, x, y, z = self.shape
        return b * x * y * z

    def _level_shape(self, level: int) -> tuple[int, int, int, int]:
        b, x, y, z = self.shape
        return b, x >> level, y >> level, z >> level

    def _index(self, coords: torch.Tensor, level: int) -> torch.Tensor:
        """Flat cell index of each row at ``level`` (0 = fine grid, 1 = the stride-2 grid above it)."""
        _, nx, ny, nz = self._level_shape(level)
        c = coords.long()
        cell = (c[:, :3] - torch.tensor(self.origin, device=c.device)) // (self.stride << level)
        return (((c[:, 3] - self.batch0) * nx + cell[:, 0]) * ny + cell[:, 1]) * nz + cell[:, 2]

    def scatter(self, feats: torch.Tensor, coords: torch.Tensor, level: int) -> torch.Tensor:
        """(B, C, X, Y, Z) view (channels-last memory) with ``feats`` at ``coords`` and zeros elsewhere."""
        shape = self._level_shape(level)
        grid = feats.new_zeros(shape[0] * shape[1] * shape[2] * shape[3], feats.shape[1])
        grid.index_copy_(0, self._index(coords, level), feats)
        return grid.view(*shape, feats.shape[1]).permute(0, 4, 1, 2, 3)

    def gather(self, grid: torch.Tensor, coords: torch.Tensor, level: int) -> torch.Tensor:
        """Rows of a (B, C, X, Y, Z) grid at ``coords``."""
        return grid.permute(0, 2, 3, 4, 1).reshape(-1, grid.shape[1]).index_select(0, self._index(coords, level))

    def downsample(self, coords: torch.Tensor) -> torch.Tensor:
        """Same set and (batch, x, y, z) row order as ``kernel_map.downsample_coords``, computed densely."""
        occupied = torch.zeros(self.cells, device=coords.device).index_fill_(0, self._index(coords, 0), 1.0)
        active = F.max_pool3d(occupied.view(self.shape[0], 1, *self.shape[1:]), 3, 2, 1)[:, 0] > 0
        for axis in range(3):
            plane = torch.arange(active.shape[axis + 1], device=coords.device) * 2 * self.stride + self.origin[axis]
            active &= (plane >= self.low[axis]).view([-1 if d == axis + 1 else 1 for d in range(4)])
        idx = active.nonzero()
        base = torch.tensor([*self.origin, self.batch0], device=coords.device)
        scale = torch.tensor([2 * self.stride] * 3 + [1], device=coords.device)
        return (idx[:, [1, 2, 3, 0]] * scale + base).int()

    def conv(self, feats: torch.Tensor, kernel: torch.Tensor, coords_in: torch.Tensor, coords_out: torch.Tensor,
             stride: int, transposed: bool) -> torch.Tensor:
        """Output rows of a (27, Cin, Cout) torchsparse kernel; x fastest in the kernel ↔ (x, y, z) grid axes."""
        w = kernel.view(3, 3, 3, *kernel.shape[1:])
        if transposed:
            out = F.conv_transpose3d(self.scatter(feats, coords_in, 1), w.permute(3, 4, 2, 1, 0),
                                     stride=2, padding=1, output_padding=1)
            return self.gather(out, coords_out, 0)
        out = F.conv3d(self.scatter(feats, coords_in, 0), w.permute(4, 3, 2, 1, 0), stride=stride, padding=1)
        return self.gather(out, coords_out, stride // 2)
