"""backend.sparse against full-grid F.conv3d references and the torchsparse 1.4 rules (CPU, fast)."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backend.sparse import (
    DenseGrid, SparseBatchNorm, SparseConv3d, SparseReLU, SparseTensor, downsample_coords, kernel_offsets,
    set_algorithm,
)

ALGOS = ("sparse", "dense")


def random_coords(seed: int, side: int = 12, n: int = 400, batches: int = 2, step: int = 1, shift: int = 0) -> torch.Tensor:
    """Unique int32 (x, y, z, batch) rows, shuffled, with x, y, z multiples of ``step`` from ``shift``."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, side, (n, 3), generator=g) * step + shift
    rows = torch.unique(torch.cat([xyz, torch.randint(0, batches, (n, 1), generator=g)], 1), dim=0)
    return rows[torch.randperm(len(rows), generator=g)].int()


def conv(cin: int, cout: int, algo: str, seed: int, **kw) -> SparseConv3d:
    torch.manual_seed(seed)
    return SparseConv3d(cin, cout, algorithm=algo, **kw)


def reference(feats: torch.Tensor, coords: torch.Tensor, step_in: int, kernel: torch.Tensor, coords_out: torch.Tensor,
              step_out: int, stride: int = 1, transposed: bool = False) -> torch.Tensor:
    """float64 F.conv3d / conv_transpose3d on the whole grid (zeros at inactive sites), read at ``coords_out``."""
    c, o = coords.long(), coords_out.long()
    size = int(c[:, :3].max()) // step_in + 3
    grid = torch.zeros(int(c[:, 3].max()) + 1, feats.shape[1], size, size, size, dtype=torch.float64)
    grid[c[:, 3], :, c[:, 0] // step_in, c[:, 1] // step_in, c[:, 2] // step_in] = feats.double()
    w = kernel.detach().double().view(3, 3, 3, *kernel.shape[1:])
    if transposed:
        out = F.conv_transpose3d(grid, w.permute(3, 4, 2, 1, 0), stride=2, padding=1, output_padding=1)
    else:
        out = F.conv3d(grid, w.permute(4, 3, 2, 1, 0), stride=stride, padding=1)
    return out[o[:, 3], :, o[:, 0] // step_out, o[:, 1] // step_out, o[:, 2] // step_out]


def brute_downsample(coords: torch.Tensor, ts: int) -> torch.Tensor:
    """The spdownsample rule written out: input + offset·ts, multiples of 2·ts, ≥ per-axis min, unique, sorted."""
    low = coords[:, :3].amin(0).tolist()
    found = set()
    for x, y, z, b in coords.tolist():
        for dx, dy, dz in itertools.product((-1, 0, 1), repeat=3):
            q = (x + dx * ts, y + dy * ts, z + dz * ts)
            if all(v % (2 * ts) == 0 and v >= m for v, m in zip(q, low)):
                found.add((b, *q))
    return torch.tensor([[x, y, z, b] for b, x, y, z in sorted(found)], dtype=torch.int32)


def test_kernel_offsets_x_fastest():
    off = kernel_offsets()
    assert off.shape == (27, 3)
    assert off[0].tolist() == [-1, -1, -1] and off[1].tolist() == [0, -1, -1] and off[3].tolist() == [-1, 0, -1]
    assert off[9].tolist() == [-1, -1, 0] and off[13].tolist() == [0, 0, 0] and off[26].tolist() == [1, 1, 1]


def test_stride2_rule_on_one_axis():
    line = torch.tensor([[x, 0, 0, 0] for x in range(3, 20)], dtype=torch.int32)
    expected = [[x, 0, 0, 0] for x in range(4, 21, 2)]
    assert downsample_coords(line, 1).tolist() == expected
    assert DenseGrid.around(line, 1).downsample(line).tolist() == expected
    for algo in ALGOS:
        out = conv(1, 1, algo, 0, stride=2)(SparseTensor(torch.ones(len(line), 1), line))
        assert out.coords.tolist() == expected and out.stride == 2


@pytest.mark.parametrize("ts,shift", [(1, 0), (1, -7), (2, -6), (4, 12)])
def test_stride2_rule_matches_brute_force(ts, shift):
    coords = random_coords(1, side=9, n=300, batches=3, step=ts, shift=shift)
    expected = brute_downsample(coords, ts)
    assert torch.equal(downsample_coords(coords, ts), expected)
    assert torch.equal(DenseGrid.around(coords, ts).downsample(coords), expected)


def test_full_96_grid_levels():
    axis = torch.arange(96)
    coords = torch.cat([torch.cartesian_prod(axis, axis, axis), torch.zeros(96**3, 1, dtype=torch.long)], 1).int()
    for ts, side in [(1, 49), (2, 25), (4, 13)]:
        sparse, dense = downsample_coords(coords, ts), DenseGrid.around(coords, ts).downsample(coords)
        assert torch.equal(sparse, dense) and len(sparse) == side**3
        assert sparse[:, :3].amax().item() == 2 * ts * (side - 1)
        coords = sparse


@pytest.mark.parametrize("algo", ALGOS)
@pytest.mark.parametrize("ts", [1, 2])
def test_conv_matches_dense_reference(algo, ts):
    """Stride 1, stride 2 and transposed at tensor strides 1 and 2, two batches, shuffled rows."""
    coords = random_coords(2, step=ts)
    x = SparseTensor(torch.randn(len(coords), 5), coords, stride=ts)
    same_layer = conv(5, 4, algo, 1)
    same = same_layer(x)
    assert same.coords is coords and same.stride == ts
    torch.testing.assert_close(same.feats.double(), reference(x.feats, coords, ts, same_layer.kernel, coords, ts),
                               atol=1e-5, rtol=1e-5)
    down_layer = conv(5, 6, algo, 2, stride=2)
    down = down_layer(x)
    assert down.stride == 2 * ts and torch.equal(down.coords, downsample_coords(coords, ts))
    torch.testing.assert_close(down.feats.double(), reference(x.feats, coords, ts, down_layer.kernel, down.coords,
                                                              2 * ts, stride=2), atol=1e-5, rtol=1e-5)
    up_layer = conv(6, 3, algo, 3, stride=2, transposed=True)
    up = up_layer(down)
    assert up.coords is coords and up.stride == ts
    torch.testing.assert_close(up.feats.double(), reference(down.feats, down.coords, 2 * ts, up_layer.kernel, coords,
                                                            ts, transposed=True), atol=1e-5, rtol=1e-5)


def test_definition_with_explicit_pairs():
    """out[j] += in[i] @ W[k] whenever coord_in[i] = coord_out[j] + offset_k·ts (same batch), for both paths."""
    coords = random_coords(3, side=6, n=120)
    feats = torch.randn(len(coords), 2, dtype=torch.float64)
    c = coords.long()
    offsets = torch.cat([kernel_offsets(), torch.zeros(27, 1, dtype=torch.long)], 1)
    for algo in ALGOS:
        layer = conv(2, 3, algo, 4).double()
        expected = torch.zeros(len(coords), 3, dtype=torch.float64)
        for k, off in enumerate(offsets):
            match = (c[:, None, :] == (c + off)[None]).all(-1).double()  # [i, j]
            expected += match.T @ feats @ layer.kernel.detach()[k]
        torch.testing.assert_close(layer(SparseTensor(feats, coords)).feats, expected)


def test_transposed_writes_back_in_original_row_order():
    coords = random_coords(5)
    feats = torch.randn(len(coords), 3)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(0))
    for algo in ALGOS:
        down, up = conv(3, 4, algo, 6, stride=2), conv(4, 3, algo, 7, stride=2, transposed=True)
        base = up(down(SparseTensor(feats, coords)))
        shuffled = up(down(SparseTensor(feats[perm], coords[perm])))
        assert torch.equal(shuffled.coords, coords[perm])
        torch.testing.assert_close(shuffled.feats, base.feats[perm], atol=1e-6, rtol=1e-6)


def test_transposed_needs_the_finer_level():
    coarse = SparseTensor(torch.randn(3, 2), torch.tensor([[0, 0, 0, 0], [2, 0, 0, 0], [0, 2, 2, 0]], dtype=torch.int32), 2)
    for algo in ALGOS:
        with pytest.raises(KeyError, match="stride 1"):
            conv(2, 2, algo, 0, stride=2, transposed=True)(coarse)


def test_batches_do_not_mix_and_translation_with_negative_coords():
    coords = random_coords(8, batches=3)
    feats = torch.randn(len(coords), 3)
    shifted = coords - torch.tensor([32, 16, 48, 0], dtype=torch.int32)  # multiples of 2·4: same level layout
    for algo in ALGOS:
        s1, down, up = conv(3, 3, algo, 9), conv(3, 3, algo, 10, stride=2), conv(3, 3, algo, 11, stride=2, transposed=True)
        full = s1(SparseTensor(feats, coords)).feats
        one = coords[:, 3] == 1
        torch.testing.assert_close(s1(SparseTensor(feats[one], coords[one])).feats, full[one])
        a, b = down(SparseTensor(feats, coords)), down(SparseTensor(feats, shifted))
        assert torch.equal(b.coords, a.coords - torch.tensor([32, 16, 48, 0], dtype=torch.int32))
        torch.testing.assert_close(up(b).feats, up(a).feats)


class TinyCostRegNet(nn.Module):
    """SparseCostRegNet's layer pattern (three levels down, transposed convs back up, skip additions)."""

    def __init__(self, c: int = 4):
        super().__init__()

        def block(cin, cout, **kw):
            return nn.Sequential(SparseConv3d(cin, cout, **kw), SparseBatchNorm(cout), SparseReLU(True))

        self.conv0, self.conv1, self.conv2 = block(3, c), block(c, c, stride=2), block(c, c)
        self.conv3, self.conv4 = block(c, 2 * c, stride=2), block(2 * c, 2 * c)
        self.conv7 = block(2 * c, c, stride=2, transposed=True)
        self.conv9 = block(c, c, stride=2, transposed=True)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        x0 = self.conv0(x)
        x2 = self.conv2(self.conv1(x0))
        y = x2 + self.conv7(self.conv4(self.conv3(x2)))
        return (x0 + self.conv9(y)).feats


def test_network_forward_and_gradients_agree_between_algorithms():
    """Train-mode BN over active rows, ReLU between layers (inactive sites must stay out), then backward."""
    coords = random_coords(12, side=10, n=500)
    feats = torch.randn(len(coords), 3)
    torch.manual_seed(0)
    net = TinyCostRegNet()
    results = {}
    for algo in ("sparse", "dense", "auto"):
        set_algorithm(net, algo)
        net.zero_grad()
        inp = feats.clone().requires_grad_()
        out = net(SparseTensor(inp, coords))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results[algo] = [out, inp.grad] + [p.grad.clone() for p in net.parameters()]
    for a, b, c in zip(results["sparse"], results["dense"], results["auto"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)


def test_parameters_and_state_dict_keys():
    block = nn.Sequential(SparseConv3d(32, 16), SparseBatchNorm(16), SparseReLU(True))
    assert [(k, tuple(v.shape)) for k, v in block.state_dict().items()] == [
        ("0.kernel", (27, 32, 16)), ("1.weight", (16,)), ("1.bias", (16,)), ("1.running_mean", (16,)),
        ("1.running_var", (16,)), ("1.num_batches_tracked", ())]
    up = SparseConv3d(64, 32, stride=2, transposed=True)
    assert [n for n, _ in up.named_parameters()] == ["kernel"] and up.kernel.shape == (27, 64, 32)
    for layer, fan in [(block[0], 32), (up, 32), (SparseConv3d(16, 8, stride=2, transposed=True), 8)]:
        assert 0.9 < layer.kernel.abs().max().item() * (fan * 27) ** 0.5 <= 1  # U(±1/√(fan·27))
    set_algorithm(block, "dense")
    assert block[0].algorithm == "dense"
    with pytest.raises(ValueError):
        set_algorithm(block, "fast")
