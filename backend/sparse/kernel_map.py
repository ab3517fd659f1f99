"""Coordinate rules and kernel maps of torchsparse 1.4 for 3×3×3 kernels, in plain PyTorch.

Points are matched through int64 keys (x, y, z, batch shifted to be non-negative), ``torch.sort`` and
``torch.searchsorted``: no hashing extension, no Python loop over points, runs on CPU, CUDA and MPS.
"""

from __future__ import annotations

import torch

from .tensor import KernelMap


def kernel_offsets(device: torch.device | str | None = None) -> torch.Tensor:
    """(27, 3) int64 offsets in torchsparse order: k = (dx+1) + 3(dy+1) + 9(dz+1), x fastest, centre k = 13."""
    k = torch.arange(27, device=device)
    return torch.stack([k % 3, k // 3 % 3, k // 9], 1) - 1


def _encode(coords: torch.Tensor, lo: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """int64 key whose order is lexicographic (batch, x, y, z); ``lo``/``size`` bound the (x, y, z, b) columns."""
    c = coords - lo
    return ((c[:, 3] * size[0] + c[:, 0]) * size[1] + c[:, 1]) * size[2] + c[:, 2]


def _decode(keys: torch.Tensor, lo: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    z, keys = keys % size[2], keys // size[2]
    y, keys = keys % size[1], keys // size[1]
    x, b = keys % size[0], keys // size[0]
    return torch.stack([x, y, z, b], 1) + lo


def downsample_coords(coords: torch.Tensor, stride: int) -> torch.Tensor:
    """Output sites of a k=3, stride-2 conv at tensor stride ``stride`` (torchsparse 1.4 ``spdownsample``).

    Candidates are input + offset·stride whose x, y, z are multiples of 2·stride and ≥ the per-axis minimum
    input coordinate (whole tensor, all batches); there is no upper bound. Per axis the only such candidates
    are c - r and c + r with r = c mod 2·stride, so 8 candidates per point replace the 27 offsets.
    Returns unique int32 rows sorted by (batch, x, y, z).
    """
    c = coords.long()
    xyz = c[:, :3]
    signs = (torch.arange(8, device=c.device)[:, None] >> torch.arange(3, device=c.device) & 1) * 2 - 1
    cand = (xyz + signs[:, None, :] * xyz.remainder(2 * stride)).reshape(-1, 3)
    cand = torch.cat([cand, c[:, 3:].repeat(8, 1)], 1)[(cand >= xyz.amin(0)).all(1)]
    lo = cand.amin(0)
    size = cand.amax(0) - lo + 1
    return _decode(torch.unique(_encode(cand, lo, size)), lo, size).int()


def build_kernel_map(fine: torch.Tensor, coarse: torch.Tensor, stride: int) -> KernelMap:
    """Pairs (fine row, coarse row) per offset k with fine = coarse + offset_k·stride (x, y, z; same batch).

    For a forward conv ``fine`` are the input and ``coarse`` the output coordinates (identical for stride 1);
    a transposed conv uses the same pairs reversed. ``stride`` is the tensor stride of ``fine``.
    """
    f, q0 = fine.long(), coarse.long()
    lo, hi = f.amin(0), f.amax(0)
    size = hi - lo + 1
    keys, order = torch.sort(_encode(f, lo, size))
    offsets = torch.cat([kernel_offsets(f.device) * stride, torch.zeros(27, 1, dtype=torch.long, device=f.device)], 1)
    pairs = []
    for offset in offsets:
        q = q0 + offset
        key = _encode(q, lo, size)
        pos = torch.searchsorted(keys, key).clamp_(max=keys.numel() - 1)
        hit = ((q >= lo) & (q <= hi)).all(1) & (keys[pos] == key)
        rows = hit.nonzero().squeeze(1)
        pairs.append((order[pos[rows]], rows))
    return pairs
