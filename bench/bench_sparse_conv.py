"""Time the "sparse" and "dense" algorithms of backend.sparse on One-2-3-45's SparseCostRegNet (lod0, 96³).

Run from the repository root: ``python -m bench.bench_sparse_conv``. No gradients, BatchNorm in train mode
(as the reference runs it), random weights; prints one row per active set.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from backend.sparse import SparseBatchNorm, SparseConv3d, SparseReLU, SparseTensor, set_algorithm


def block(cin: int, cout: int, stride: int = 1, transposed: bool = False) -> nn.Sequential:
    return nn.Sequential(SparseConv3d(cin, cout, 3, stride, transposed), SparseBatchNorm(cout), SparseReLU(True))


class SparseCostRegNet(nn.Module):
    """One-2-3-45 ``tsparse/modules.py: SparseCostRegNet(d_in=32, d_out=16)``: same layers, strides and skips."""

    def __init__(self, d_in: int = 32, d_out: int = 16):
        super().__init__()
        self.conv0, self.conv1, self.conv2 = block(d_in, d_out), block(d_out, 16, 2), block(16, 16)
        self.conv3, self.conv4 = block(16, 32, 2), block(32, 32)
        self.conv5, self.conv6 = block(32, 64, 2), block(64, 64)
        self.conv7, self.conv9 = block(64, 32, 2, True), block(32, 16, 2, True)
        self.conv11 = block(16, d_out, 2, True)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        x0 = self.conv0(x)
        x2 = self.conv2(self.conv1(x0))
        x4 = self.conv4(self.conv3(x2))
        y = x4 + self.conv7(self.conv6(self.conv5(x4)))
        y = x2 + self.conv9(y)
        return (x0 + self.conv11(y)).feats


def grid_coords(keep_ellipsoid: bool, side: int = 96) -> torch.Tensor:
    axis = torch.arange(side)
    xyz = torch.cartesian_prod(axis, axis, axis)
    if keep_ellipsoid:  # semi-axes 45, 38, 32 voxels: ≈ 229k sites
        u = (xyz.double() - (side - 1) / 2) / torch.tensor([45.0, 38.0, 32.0])
        xyz = xyz[(u**2).sum(1) <= 1]
    return torch.cat([xyz, torch.zeros(len(xyz), 1, dtype=torch.long)], 1).int()


def timed(net: nn.Module, feats: torch.Tensor, coords: torch.Tensor, algorithm: str,
          repeat: int) -> tuple[float, torch.Tensor, SparseTensor]:
    """Best wall time of ``repeat`` forwards, each from a fresh tensor (kernel maps are part of the cost)."""
    set_algorithm(net, algorithm)
    best = float("inf")
    for _ in range(repeat):
        x = SparseTensor(feats, coords)
        start = time.perf_counter()
        out = net(x)
        out.sum().item()  # waits for an accelerator to finish
        best = min(best, time.perf_counter() - start)
    return best, out, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=2, help="runs per algorithm; the best is reported")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    args = parser.parse_args()
    torch.manual_seed(0)
    net = SparseCostRegNet().train().to(args.device)
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads")
    print(f"{'active set':<22} {'voxels':>8} {'levels (ts 2/4/8)':>24} {'sparse s':>9} {'dense s':>8} {'auto s':>7} {'max|sparse-dense|':>18}")
    with torch.no_grad():
        for name, ellipsoid in [("ellipsoid in 96³", True), ("full 96³ grid", False)]:
            coords = grid_coords(ellipsoid).to(args.device)
            feats = torch.randn(len(coords), 32, device=args.device)
            t_sparse, out_sparse, _ = timed(net, feats, coords, "sparse", args.repeat)
            t_dense, out_dense, x = timed(net, feats, coords, "dense", args.repeat)
            t_auto, _, _ = timed(net, feats, coords, "auto", args.repeat)
            levels = "/".join(str(len(x.cache.coords[s])) for s in (2, 4, 8))
            diff = (out_sparse - out_dense).abs().max().item()
            print(f"{name:<22} {len(coords):>8} {levels:>24} {t_sparse:>9.2f} {t_dense:>8.2f} {t_auto:>7.2f} {diff:>18.2e}")


if __name__ == "__main__":
    main()
