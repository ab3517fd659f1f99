"""The network's parameter names and shapes equal the official One-2-3-45 lod0 checkpoint's (§5.1)."""

from __future__ import annotations

from backend.models import One2345Reconstructor


def official_shapes() -> dict[str, tuple[int, ...]]:
    """The 157 entries of ckpt_215000.pth's four modules, written out from the reference's list."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    f = "pyramid_feature_network"
    for key, shape in {
        "conv0.0": (8, 3, 3, 3), "conv0.1": (8, 8, 3, 3),
        "conv1.0": (16, 8, 5, 5), "conv1.1": (16, 16, 3, 3), "conv1.2": (16, 16, 3, 3),
        "conv2.0": (32, 16, 5, 5), "conv2.1": (32, 32, 3, 3), "conv2.2": (32, 32, 3, 3),
    }.items():
        shapes[f"{f}.{key}.conv.weight"] = shape
        bn(f"{f}.{key}.bn", shape[0])
    for name, (cout, cin, k) in {"toplayer": (32, 32, 1), "lat1": (32, 16, 1), "lat0": (32, 8, 1),
                                 "smooth1": (16, 32, 3), "smooth0": (8, 32, 3)}.items():
        shapes[f"{f}.{name}.weight"] = (cout, cin, k, k)
        shapes[f"{f}.{name}.bias"] = (cout,)

    s = "sdf_network_lod0"
    shapes[f"{s}.compress_layer.conv.weight"] = (16, 56, 3, 3)
    bn(f"{s}.compress_layer.bn", 16)
    for n, (cin, cout) in {0: (32, 16), 1: (16, 16), 2: (16, 16), 3: (16, 32), 4: (32, 32), 5: (32, 64),
                           6: (64, 64), 7: (64, 32), 9: (32, 16), 11: (16, 16)}.items():
        shapes[f"{s}.sparse_costreg_net.conv{n}.net.0.kernel"] = (27, cin, cout)
        bn(f"{s}.sparse_costreg_net.conv{n}.net.1", cout)
    for n, cin in ((0, 39), (1, 144), (2, 144)):
        shapes[f"{s}.sdf_layer.lin{n}.bias"] = (128,)
        shapes[f"{s}.sdf_layer.lin{n}.weight_g"] = (128, 1)
        shapes[f"{s}.sdf_layer.lin{n}.weight_v"] = (128, cin)

    r = "rendering_network_lod0"
    shapes[f"{r}.s"] = ()
    for block, layers in {"ray_dir_fc": {0: (16, 4), 2: (59, 16)}, "base_fc": {0: (64, 193), 2: (32, 64)},
                          "vis_fc": {0: (32, 32), 2: (33, 32)}, "vis_fc2": {0: (32, 32), 2: (1, 32)},
                          "rgb_fc": {0: (16, 37), 2: (8, 16), 4: (1, 8)}}.items():
        for i, shape in layers.items():
            shapes[f"{r}.{block}.{i}.weight"] = shape
            shapes[f"{r}.{block}.{i}.bias"] = (shape[0],)
    shapes["variance_network_lod0.variance"] = ()
    return shapes


def test_state_dict_matches_official_layout() -> None:
    model = One2345Reconstructor()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = official_shapes()
    assert len(official) == 157
    assert ours == official


def test_trainable_parameter_count_matches_reference() -> None:
    model = One2345Reconstructor()
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in model.named_children()}
    assert counts == {"pyramid_feature_network": 48_976, "sdf_network_lod0": 362_368,
                      "rendering_network_lod0": 19_567, "variance_network_lod0": 1}
    assert sum(counts.values()) == 430_912
