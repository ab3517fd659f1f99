"""Sparse 3D convolution with torchsparse 1.4 semantics in plain PyTorch (CPU, CUDA, MPS).

torchsparse is not required. See ``conv`` for the layers and the "sparse" / "dense" / "auto" algorithms.
"""

from .conv import ALGORITHMS, SparseBatchNorm, SparseConv3d, SparseReLU, set_algorithm, sparse_conv
from .dense import DenseGrid
from .kernel_map import build_kernel_map, downsample_coords, kernel_offsets
from .tensor import KernelMap, SparseCache, SparseTensor

__all__ = [
    "ALGORITHMS", "DenseGrid", "KernelMap", "SparseBatchNorm", "SparseCache", "SparseConv3d", "SparseReLU",
    "SparseTensor", "build_kernel_map", "downsample_coords", "kernel_offsets", "set_algorithm", "sparse_conv",
]
