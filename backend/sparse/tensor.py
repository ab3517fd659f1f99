"""Sparse voxel tensor with torchsparse-1.4 conventions.

Coordinates are int32 (x, y, z, batch) rows, batch LAST, always in level-0 units: at tensor stride s every
coordinate is a multiple of s. All tensors derived from one input share a ``SparseCache`` by reference,
because a transposed conv must find the finer level's rows (in their original order) and repeated convs at
one level should not rebuild their kernel maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

KernelMap = list[tuple[torch.Tensor, torch.Tensor]]
"""Per kernel offset: (fine-level row indices, coarse-level row indices) with fine = coarse + offset·ts."""


@dataclass
class SparseCache:
    """Coordinates per tensor stride and kernel maps keyed by (input stride, kernel size, conv stride)."""

    coords: dict[int, torch.Tensor] = field(default_factory=dict)
    kmaps: dict[tuple[int, int, int], KernelMap] = field(default_factory=dict)

    def level(self, stride: int) -> torch.Tensor:
        """Coordinates registered for ``stride``; a transposed conv can only undo an earlier strided conv."""
        if stride not in self.coords:
            raise KeyError(
                f"no coordinates registered at tensor stride {stride} (known: {sorted(self.coords)}); "
                "a transposed conv must follow a strided conv on the same input"
            )
        return self.coords[stride]


class SparseTensor:
    """Feature rows (N, C) at int32 coordinates (N, 4) = (x, y, z, batch) and tensor stride ``stride``."""

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, stride: int = 1, cache: SparseCache | None = None):
        if coords.dtype != torch.int32 or coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"coords must be an (N, 4) int32 tensor (x, y, z, batch), got {coords.dtype} {tuple(coords.shape)}")
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"{feats.shape[0]} feature rows for {coords.shape[0]} coordinates")
        self.feats, self.coords, self.stride = feats, coords, stride
        self.cache = SparseCache() if cache is None else cache
        self.cache.coords.setdefault(stride, coords)

    @property
    def F(self) -> torch.Tensor:  # torchsparse alias
        return self.feats

    @property
    def C(self) -> torch.Tensor:  # torchsparse alias
        return self.coords

    @property
    def s(self) -> int:  # torchsparse alias
        return self.stride

    def with_feats(self, feats: torch.Tensor) -> SparseTensor:
        """Same sites, new features (what per-row layers such as BatchNorm and ReLU produce)."""
        return SparseTensor(feats, self.coords, self.stride, self.cache)

    def __add__(self, other: SparseTensor) -> SparseTensor:
        """Skip connection: rows are added one to one, so both operands must be the same level."""
        assert self.stride == other.stride and self.coords.shape == other.coords.shape, "adding tensors of different levels"
        return self.with_feats(self.feats + other.feats)

    def __repr__(self) -> str:
        return f"SparseTensor(rows={self.coords.shape[0]}, channels={self.feats.shape[1]}, stride={self.stride})"
