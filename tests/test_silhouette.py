"""Silhouette carving: the hull distance of a rendered sphere, and the carve cutting what no view shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from backend.evaluation.evaluate import render_rig
from backend.frame import ReconstructionFrame
from backend.silhouette import FAR_VOXELS, HullCarver, SilhouetteField, foreground_masks, signed_pixel_distance, thin_part_distance
from backend.views import load_view_folder

RADIUS = 0.3


@pytest.fixture(scope="module")
def sphere_views(tmp_path_factory: pytest.TempPathFactory):
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    sphere.visual.vertex_colors = np.tile([200, 60, 40, 255], (len(sphere.vertices), 1)).astype(np.uint8)
    folder = tmp_path_factory.mktemp("sphere") / "views"
    render_rig(sphere, folder, 60.0)
    views = load_view_folder(folder)
    frame = ReconstructionFrame.from_cameras(views.reference_c2w, views.source_c2ws, views.intrinsics, views.near_far,
                                             views.image_size)
    return views, frame


def test_signed_pixel_distance() -> None:
    mask = np.zeros((9, 9), bool)
    mask[3:6, 3:6] = True
    d = signed_pixel_distance(mask)
    assert d[4, 4] == -2 and d[4, 0] == 3 and d[3, 3] == -1 and d[0, 0] == pytest.approx(np.hypot(3, 3))


def test_masks_fill_white_holes_and_ignore_the_background() -> None:
    images = np.ones((1, 16, 16, 3), np.float32)
    images[0, 4:12, 4:12] = 0.2
    images[0, 7:9, 7:9] = 1.0  # a white patch inside the object stays object
    masks = foreground_masks(images)
    assert masks[0, 4:12, 4:12].all() and masks[0].sum() == 64


def test_hull_distance_of_a_sphere(sphere_views) -> None:
    views, frame = sphere_views
    projections, cameras = frame.source_cameras(views.source_c2ws)
    field = SilhouetteField(foreground_masks(views.source_images), torch.as_tensor(projections, dtype=torch.float32),
                            float(frame.intrinsics[0, 0]), margin_px=0.0)
    centre = torch.as_tensor(frame.to_normalised(np.zeros((1, 3))), dtype=torch.float32)
    radius = RADIUS / frame.radius
    directions = torch.nn.functional.normalize(torch.randn(200, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    pixel = float(np.linalg.norm(cameras - centre.numpy(), axis=1).max()) / float(frame.intrinsics[0, 0])  # one pixel, volume units
    for scale, expected in ((0.0, -radius), (1.0, 0.0), (1.5, 0.5 * radius)):
        values = field(centre + scale * radius * directions)
        # The hull of 32 views is a little larger than the sphere, so distances come out slightly low.
        assert values.max() <= expected + 2 * pixel and values.min() >= expected - 0.15 * radius - 2 * pixel, (scale, values)
    one_view = SilhouetteField(foreground_masks(views.source_images[:1]), torch.as_tensor(projections[:1], dtype=torch.float32),
                               float(frame.intrinsics[0, 0]))
    behind = torch.as_tensor(2 * cameras[:1] - centre.numpy(), dtype=torch.float32)
    assert one_view(behind).item() == -np.inf  # a view cannot carve what is behind its camera


def test_carving_keeps_the_sphere_and_removes_what_no_view_shows(sphere_views) -> None:
    from backend.extraction import marching_cubes

    views, frame = sphere_views
    field = SilhouetteField.from_views(views, frame)
    axis = torch.linspace(-1, 1, 48)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    centre = torch.as_tensor(frame.to_normalised(np.zeros((1, 3))), dtype=torch.float32)
    fat = (points - centre).norm(dim=1) - 2 * RADIUS / frame.radius  # an SDF twice the sphere's size
    carved = torch.maximum(fat, field(points)).reshape(48, 48, 48).numpy()
    vertices, _ = marching_cubes(carved)
    distances = np.linalg.norm(frame.to_world(vertices.astype(np.float64)), axis=1)
    assert len(vertices) > 100 and abs(np.median(distances) - RADIUS) < 0.03 and distances.max() < RADIUS * 1.25


def _outside_share(vertices: np.ndarray, views, grow_px: int) -> float:
    """Share of world-space vertices that fall outside some source view's silhouette grown by ``grow_px``."""
    from scipy import ndimage

    from backend.cameras import OPENGL_TO_OPENCV

    outside = np.zeros(len(vertices), bool)
    for image, c2w in zip(views.source_images, views.source_c2ws):
        mask = ndimage.binary_dilation(foreground_masks(image[None])[0], iterations=grow_px)
        uvw = (views.intrinsics @ np.linalg.inv(c2w @ OPENGL_TO_OPENCV)[:3]) @ np.c_[vertices, np.ones(len(vertices))].T
        col, row = (np.floor(uvw[:2] / uvw[2] + 0.5).astype(int))
        inside_image = (col >= 0) & (col < mask.shape[1]) & (row >= 0) & (row < mask.shape[0])
        outside[inside_image] |= ~mask[row[inside_image], col[inside_image]]
    return float(outside.mean())


def test_reconstruction_is_carved_to_the_silhouettes(tmp_path: Path) -> None:
    """The bundled checkpoint on the bundled spot views. Uncarved, about a tenth of the vertices lie more than 3 px
    outside some silhouette. Carved, almost none do, and none by more than 8 px: at 64^3 a grid cell spans
    about 4 px, and marching cubes places the carved surface only to within a cell."""
    from backend.reconstruction import ReconstructionPipeline

    views = load_view_folder(Path(__file__).resolve().parents[1] / "examples" / "spot_views")
    pipeline = ReconstructionPipeline.from_checkpoint(None, "cpu")
    carved, plain = pipeline(views, 64), pipeline(views, 64, carve=False)
    assert len(carved.faces) > 500
    assert _outside_share(carved.vertices, views, grow_px=3) < 0.01 and _outside_share(carved.vertices, views, grow_px=8) == 0.0
    assert _outside_share(plain.vertices, views, grow_px=3) > 0.05
    # Views marked generated (as image2mesh writes them) are not carved unless asked.
    import dataclasses

    generated = pipeline(dataclasses.replace(views, generated=True), 64)
    assert np.array_equal(generated.vertices, plain.vertices) and np.array_equal(generated.faces, plain.faces)


def test_generated_mark_round_trips_through_pose_json(tmp_path: Path) -> None:
    import json

    from PIL import Image

    from backend.cameras import rig_c2ws
    from backend.errors import InputError
    from backend.views import write_view_folder

    images = {name: Image.new("RGB", (256, 256), "white") for name in rig_c2ws(60.0)}
    assert not load_view_folder(write_view_folder(tmp_path / "given", 60.0, images)).generated
    folder = write_view_folder(tmp_path / "made", 60.0, images, generated=True)
    assert load_view_folder(folder).generated
    pose = json.loads((folder / "pose.json").read_text())
    pose["generated"] = "yes"
    (folder / "pose.json").write_text(json.dumps(pose))
    with pytest.raises(InputError, match="must be true or false"):
        load_view_folder(folder)


def test_thin_parts_are_what_no_ball_of_the_radius_covers() -> None:
    solid = np.zeros((40, 40, 40), bool)
    solid[5:25, 5:25, 5:25] = True  # a thick cube
    solid[25:38, 12:18, 14] = True  # with a one-voxel fin
    distance = thin_part_distance(solid, 2.5)
    assert (distance[26:37, 13:17, 14] < 0).all()  # the fin is thin
    assert distance[15, 15, 15] > 5  # the cube's middle is far from anything thin
    assert (thin_part_distance(np.zeros((8, 8, 8), bool), 2.5) == FAR_VOXELS).all()


def empty_network(points: torch.Tensor) -> torch.Tensor:
    """An SDF with no surface at all: what the network gives for a sheet thinner than its voxels."""
    return torch.full(points.shape[:1], 0.1)


def test_a_flat_sheet_the_network_misses_is_kept_from_the_hull(tmp_path: Path) -> None:
    from backend.extraction import field_grid, marching_cubes

    sheet = trimesh.creation.box(extents=(0.5, 0.36, 0.01))  # lying flat, like the alligator of the evaluation
    sheet.visual.vertex_colors = np.tile([40, 120, 200, 255], (len(sheet.vertices), 1)).astype(np.uint8)
    render_rig(sheet, tmp_path / "views", 60.0)
    views = load_view_folder(tmp_path / "views")
    frame = ReconstructionFrame.from_cameras(views.reference_c2w, views.source_c2ws, views.intrinsics, views.near_far,
                                             views.image_size)
    field = SilhouetteField.from_views(views, frame)
    resolution = 128
    carver = HullCarver(field, resolution, torch.device("cpu"))
    intersected = field_grid(lambda points: torch.maximum(empty_network(points), field(points)), resolution, torch.device("cpu"))
    assert (intersected > 0).all()  # plain intersection keeps nothing
    carved = field_grid(lambda points: carver(points, empty_network(points)), resolution, torch.device("cpu"))
    vertices, _ = marching_cubes(carved.numpy())
    world = frame.to_world(vertices.astype(np.float64))
    assert len(world) > 200
    assert np.abs(world[:, 2]).max() < 0.05  # flat, where the sheet lies
    extent = world.max(axis=0) - world.min(axis=0)
    assert extent[0] == pytest.approx(0.5, abs=0.06) and extent[1] == pytest.approx(0.36, abs=0.06)
