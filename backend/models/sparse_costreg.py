"""The sparse 3D U-Net that regularises the feature volume (the reference's ``SparseCostRegNet``)."""

from __future__ import annotations

from torch import nn

from ..sparse import SparseBatchNorm, SparseConv3d, SparseReLU, SparseTensor


class SparseConvBlock(nn.Module):
    """Sparse conv (3^3, no bias) -> BatchNorm -> ReLU; keys ``net.0.kernel`` and ``net.1.*``."""

    def __init__(self, cin: int, cout: int, stride: int = 1, transposed: bool = False) -> None:
        super().__init__()
        self.net = nn.Sequential(
            SparseConv3d(cin, cout, kernel_size=3, stride=stride, transposed=transposed),
            SparseBatchNorm(cout),
            SparseReLU(inplace=True),
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.net(x)


class SparseCostRegNet(nn.Module):
    """Three stride-2 levels down, three transposed levels up, additive skips after each up block."""

    def __init__(self, d_in: int, d_out: int = 16) -> None:
        super().__init__()
        self.conv0 = SparseConvBlock(d_in, d_out)
        self.conv1 = SparseConvBlock(d_out, 16, stride=2)
        self.conv2 = SparseConvBlock(16, 16)
        self.conv3 = SparseConvBlock(16, 32, stride=2)
        self.conv4 = SparseConvBlock(32, 32)
        self.conv5 = SparseConvBlock(32, 64, stride=2)
        self.conv6 = SparseConvBlock(64, 64)
        self.conv7 = SparseConvBlock(64, 32, stride=2, transposed=True)
        self.conv9 = SparseConvBlock(32, 16, stride=2, transposed=True)
        self.conv11 = SparseConvBlock(16, d_out, stride=2, transposed=True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        x0 = self.conv0(x)
        x2 = self.conv2(self.conv1(x0))
        x4 = self.conv4(self.conv3(x2))
        y = self.conv6(self.conv5(x4))
        y = x4 + self.conv7(y)
        y = x2 + self.conv9(y)
        return x0 + self.conv11(y)
