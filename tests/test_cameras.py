"""One-2-3-45 camera conventions, view schedule, pose.json layout and the normalised reconstruction frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend import cameras
from backend.frame import ReconstructionFrame
from backend.models.volume import aggregate_views
from backend.reconstruction import camera_tensors
from backend.views import ViewSet, load_view_folder, write_view_folder


def test_look_at_convention() -> None:
    c2w = cameras.look_at_c2w(90.0, 0.0)
    np.testing.assert_allclose(c2w[:3, 3], [0.0, -1.2, 0.0], atol=1e-12)  # azimuth 0 on -y
    np.testing.assert_allclose(cameras.camera_centre(90.0, 90.0), [1.2, 0.0, 0.0], atol=1e-12)  # 90 on +x
    np.testing.assert_allclose(cameras.camera_centre(0.0, 0.0), [0.0, 0.0, 1.2], atol=1e-12)  # polar 0 on +z
    # OpenGL camera: columns right, up, backward (= from the object to the camera); right-handed
    np.testing.assert_allclose(c2w[:3, 2], [0.0, -1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(c2w[:3, 1], [0.0, 0.0, 1.0], atol=1e-12)
    assert np.isclose(np.linalg.det(c2w[:3, :3]), 1.0)


@pytest.mark.parametrize("polar, second_ring", [(60.0, [4, 5, 6, 7]), (75.0, [4, 5, 6, 7]), (76.0, [8, 9, 10, 11])])
def test_view_schedule(polar: float, second_ring: list[int]) -> None:
    angles = cameras.view_angles(polar)
    names = list(angles)
    assert names[:8] == [f"{k}.png" for k in [0, 1, 2, 3] + second_ring]
    assert names[8:12] == ["0_0.png", "0_1.png", "0_2.png", "0_3.png"]
    assert len(names) == 40
    assert angles["0.png"] == (polar, 30.0)  # the input view sits at azimuth 30
    ring = second_ring[0]
    assert angles[f"{ring}.png"][0] == (polar + 30 if polar <= 75 else polar - 30)
    p, a = angles["2.png"]
    assert [angles[f"2_{j}.png"] for j in range(4)] == [(p - 10, a), (p + 10, a), (p, a - 10), (p, a + 10)]


def test_relative_pose_vector() -> None:
    v = cameras.relative_pose_vector(30.0, 90.0)
    np.testing.assert_allclose(v, [np.pi / 6, 1.0, 0.0, 0.0], atol=1e-12)


def _write_folder(tmp_path: Path, polar: float) -> Path:
    rng = np.random.default_rng(0)
    images = {}
    for name in cameras.view_angles(polar):
        rgba = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
        images[name] = Image.fromarray(rgba, "RGBA")
    return write_view_folder(tmp_path / "views", polar, images)


def test_pose_json_layout_and_round_trip(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path, 60.0)
    meta = json.loads((folder / "pose.json").read_text())
    assert meta["intrinsics"] == [[280.0, 0.0, 128.0], [0.0, 280.0, 128.0], [0.0, 0.0, 1.0]]
    assert meta["near_far"] == [0.5, 1.8]
    assert list(meta["c2ws"])[:2] == ["0.png", "1.png"] and len(meta["c2ws"]) == 40
    assert np.asarray(meta["c2ws"]["3_2.png"]).shape == (4, 4)
    assert sorted(p.name for p in (folder / "stage1_8").iterdir()) == sorted(f"{k}.png" for k in range(8))
    assert len(list((folder / "stage2_8").iterdir())) == 32
    views = load_view_folder(folder)
    assert views.source_images.shape == (32, 256, 256, 3)
    assert views.source_names[0] == "0_0.png" and views.source_names[-1] == "7_3.png"
    np.testing.assert_allclose(views.reference_c2w, cameras.look_at_c2w(60.0, 30.0), atol=1e-12)
    # alpha is composited onto white, as the reference loader does
    rgba = np.asarray(Image.open(folder / "stage2_8" / "0_0.png"), dtype=np.float32) / 255
    expected = rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]
    np.testing.assert_allclose(views.source_images[0], expected, atol=1e-6)


def _rig_views(polar: float) -> ViewSet:
    c2ws = cameras.rig_c2ws(polar)
    names = list(c2ws)
    return ViewSet(np.zeros((32, 256, 256, 3), np.float32), np.stack([c2ws[n] for n in names[8:]]), c2ws[names[0]],
                   cameras.INTRINSICS, cameras.NEAR_FAR, names[8:])


@pytest.mark.parametrize("polar", [40.0, 60.0, 75.0, 90.0, 110.0, 130.0])
def test_normalisation_frame_matches_reference_numbers(polar: float) -> None:
    views = _rig_views(polar)
    frame = ReconstructionFrame.from_cameras(views.reference_c2w, views.source_c2ws, views.intrinsics, views.near_far, (256, 256))
    assert 1.33 < frame.radius < 1.45
    assert abs(frame.centre[0]) < 1e-6 and abs(frame.centre[1]) < 0.06 and 1.19 < frame.centre[2] < 1.26
    origin = frame.to_normalised(np.zeros((1, 3)))[0]
    assert np.linalg.norm(origin) < 0.05  # the world origin lands near the cube's centre
    pts = np.random.default_rng(1).uniform(-1, 1, (100, 3))
    np.testing.assert_allclose(frame.to_normalised(frame.to_world(pts)), pts, atol=1e-12)
    _, _, projections, centres = camera_tensors(views, torch.device("cpu"))
    # every source camera looks at the world origin: it projects to the principal point (128, 128)
    o = torch.tensor(origin, dtype=torch.float32)
    pix = projections[:, :, :3] @ o + projections[:, :, 3]
    torch.testing.assert_close(pix[:, :2] / pix[:, 2:], torch.full((32, 2), 128.0), atol=1e-3, rtol=0)
    # source cameras sit inside the cube, at the reference's normalised distances
    assert ((centres - o).norm(dim=1) - 1.2 / frame.radius).abs().max() < 1e-4
    assert 0.8 < centres.norm(dim=1).min() and centres.norm(dim=1).max() < 0.95


def test_active_voxels_at_polar_90_match_reference() -> None:
    """The reference reports 86-88 % of the 96^3 voxels seen by two or more views for this rig."""
    _, _, projections, _ = camera_tensors(_rig_views(90.0), torch.device("cpu"))
    coords, feats = aggregate_views(torch.zeros(32, 1, 256, 256), projections, 96, 1)
    assert 0.86 < coords.shape[0] / 96**3 < 0.89
    assert feats.shape == (coords.shape[0], 2)
    assert coords.min() == 0 and coords.max() == 95
