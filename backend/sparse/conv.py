"""torchsparse-1.4-compatible layers: ``SparseConv3d`` (parameter ``kernel`` (27, Cin, Cout), no bias),
``SparseBatchNorm`` and ``SparseReLU``, so One-2-3-45 checkpoints load without key remapping.

Two exact algorithms sit behind one interface (``algorithm`` attribute, see ``set_algorithm``):
"sparse" gathers rows per kernel offset, multiplies and scatter-adds (general, any grid size);
"dense" runs F.conv3d on a masked dense grid (much faster when the active set fills its bounding box);
"auto" picks per call. torchsparse itself is not required.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .dense import DenseGrid
from .kernel_map import build_kernel_map, downsample_coords
from .tensor import KernelMap, SparseTensor

ALGORITHMS = ("auto", "sparse", "dense")

# "auto" goes dense while the grid has at most this many cells per active site of the finer level: the
# dense conv pays for every cell, the sparse one per site but with a gather and a scatter per offset. On
# 2 CPU cores SparseCostRegNet runs ≈ 10× faster dense on the full 96³ grid (1 cell per site) and ≈ 5×
# on a 229k-voxel ellipsoid (≈ 2–4 cells per site; bench/bench_sparse_conv.py), so 8 stays on the safe side.
DENSE_MAX_CELLS_PER_SITE = 8
# ... and at most this many cells (per channel, all batches): 2**24 fp32 cells × 64 channels = 4 GiB.
DENSE_MAX_CELLS = 2**24


def sparse_conv(feats: torch.Tensor, kernel: torch.Tensor, kmap: KernelMap, rows_out: int,
                transposed: bool) -> torch.Tensor:
    """Gather → matmul → index_add per kernel offset over the (fine, coarse) pairs of ``kmap``."""
    out = feats.new_zeros(rows_out, kernel.shape[2])
    for k, (fine, coarse) in enumerate(kmap):
        src, dst = (coarse, fine) if transposed else (fine, coarse)
        out.index_add_(0, dst, feats[src] @ kernel[k])
    return out


class SparseConv3d(nn.Module):
    """torchsparse 1.4 ``spnn.Conv3d`` for kernel 3: submanifold (stride 1), downsampling (stride 2) or
    transposed stride 2 (writes onto the finer level's cached rows, undoing an earlier stride-2 conv)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 transposed: bool = False, algorithm: str = "auto"):
        super().__init__()
        if kernel_size != 3 or stride not in (1, 2) or (transposed and stride != 2):
            raise ValueError(f"unsupported kernel_size={kernel_size}, stride={stride}, transposed={transposed}")
        self.in_channels, self.out_channels, self.stride, self.transposed = in_channels, out_channels, stride, transposed
        self.algorithm = algorithm
        self.kernel = nn.Parameter(torch.empty(27, in_channels, out_channels))
        self.reset_parameters()

    @property
    def algorithm(self) -> str:
        return self._algorithm

    @algorithm.setter
    def algorithm(self, value: str) -> None:
        if value not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, not {value!r}")
        self._algorithm = value

    def reset_parameters(self) -> None:
        """torchsparse init: U(±1/√(fan·27)), fan = out_channels for transposed layers."""
        bound = 1 / math.sqrt((self.out_channels if self.transposed else self.in_channels) * 27)
        nn.init.uniform_(self.kernel, -bound, bound)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"transposed={self.transposed}, algorithm={self.algorithm!r}")

    def forward(self, x: SparseTensor) -> SparseTensor:
        # "fine" is the finer of the two levels: the input of a forward conv, the output of a transposed one.
        if self.transposed:
            out_stride = x.stride // 2
            coords_out = fine = x.cache.level(out_stride)
            fine_stride = out_stride
        else:
            out_stride = x.stride * self.stride
            coords_out = x.coords if self.stride == 1 else x.cache.coords.get(out_stride)
            fine, fine_stride = x.coords, x.stride
        grid = None
        if self.algorithm != "sparse":
            grid = DenseGrid.around(torch.cat([fine, x.coords]) if self.transposed else fine, fine_stride)
            if self.algorithm == "auto" and grid.cells > min(DENSE_MAX_CELLS_PER_SITE * fine.shape[0], DENSE_MAX_CELLS):
                grid = None
        if coords_out is None:
            coords_out = downsample_coords(x.coords, x.stride) if grid is None else grid.downsample(x.coords)
        if grid is not None:
            feats = grid.conv(x.feats, self.kernel, x.coords, coords_out, self.stride, self.transposed)
        else:
            coarse = x.coords if self.transposed else coords_out
            key = (fine_stride, 3, self.stride)
            if key not in x.cache.kmaps:
                x.cache.kmaps[key] = build_kernel_map(fine, coarse, fine_stride)
            feats = sparse_conv(x.feats, self.kernel, x.cache.kmaps[key], coords_out.shape[0], self.transposed)
        return SparseTensor(feats, coords_out, out_stride, x.cache)


def set_algorithm(module: nn.Module, algorithm: str) -> None:
    """Select "auto", "sparse" or "dense" for every SparseConv3d inside ``module``."""
    for m in module.modules():
        if isinstance(m, SparseConv3d):
            m.algorithm = algorithm


class _RowWise:
    """Applies the wrapped per-row module to the feature rows; the sites stay as they are."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.with_feats(super().forward(x.feats))


class SparseBatchNorm(_RowWise, nn.BatchNorm1d):
    """BatchNorm1d over the active rows (statistics over active sites only); plain BatchNorm1d state keys."""


class SparseReLU(_RowWise, nn.ReLU):
    """ReLU on the feature rows."""
