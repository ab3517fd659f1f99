"""Evaluation metrics against analytic answers: spheres, boxes, a carved sphere and synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from backend.evaluation.metrics import (
    chamfer_and_fscore,
    normalise_pair,
    occupancy_grid,
    psnr,
    sample_surface,
    ssim,
    visual_hull,
    volume_iou,
    winding_numbers,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _sphere(radius: float, centre=(0.0, 0.0, 0.0), subdivisions: int = 4) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.apply_translation(centre)
    return mesh


def _box(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))


def test_sample_surface_is_deterministic_uniform_and_on_the_surface() -> None:
    box = _box((0, 0, 0), (4, 1, 1))  # two 1x1 ends, four 4x1 sides: area 18
    points = sample_surface(box.vertices, box.faces, 20000, seed=3)
    assert np.array_equal(points, sample_surface(box.vertices, box.faces, 20000, seed=3))
    assert not np.array_equal(points, sample_surface(box.vertices, box.faces, 20000, seed=4))
    on_end = np.isclose(points[:, 0], 0.0) | np.isclose(points[:, 0], 4.0)
    assert on_end.mean() == pytest.approx(2 / 18, abs=0.01)
    sphere = _sphere(1.0)
    radii = np.linalg.norm(sample_surface(sphere.vertices, sphere.faces, 1000, seed=0), axis=1)
    assert radii.max() <= 1.0 + 1e-9 and radii.min() > 0.995


def test_normalise_pair_uses_gt_box_for_both() -> None:
    gt = np.array([[1.0, 2.0, 3.0], [3.0, 3.0, 3.5]])  # longest side 2 along x, centre (2, 2.5, 3.25)
    pred = gt + [0.2, 0.0, 0.0]
    pred_n, gt_n, scale = normalise_pair(pred, gt)
    assert scale == 2.0
    assert np.allclose(gt_n, [[-0.5, -0.25, -0.125], [0.5, 0.25, 0.125]])
    assert np.allclose(pred_n - gt_n, [0.1, 0.0, 0.0])  # the misalignment is kept, in GT units


def test_chamfer_of_a_mesh_with_itself() -> None:
    sphere = _sphere(0.5)
    points = sample_surface(sphere.vertices, sphere.faces, 20000, seed=0)
    same = chamfer_and_fscore(points, points)
    assert same["chamfer"] == 0.0 and same["fscore@0.05"] == 1.0 and same["fscore@0.1"] == 1.0
    other = chamfer_and_fscore(sample_surface(sphere.vertices, sphere.faces, 20000, seed=1), points)
    assert other["chamfer"] < 0.01 and other["fscore@0.05"] == 1.0


def test_chamfer_and_fscore_of_concentric_spheres() -> None:
    """GT radius 2 (longest side 4) vs 2.2 and 2.4, off-centre: in GT units 0.5 vs 0.55 and 0.6."""
    centre = (3.0, -1.0, 0.5)
    gt = _sphere(2.0, centre, subdivisions=5)
    for pred_radius, gap in ((2.2, 0.05), (2.4, 0.1)):
        pred = _sphere(pred_radius, centre, subdivisions=5)
        pred_v, gt_v, scale = normalise_pair(pred.vertices, gt.vertices)
        assert scale == pytest.approx(4.0, rel=1e-3)
        result = chamfer_and_fscore(
            sample_surface(pred_v, pred.faces, 50000, seed=0), sample_surface(gt_v, gt.faces, 50000, seed=1)
        )
        # Unsquared L2, mean of the two directions: both directions are ~the radial gap.
        assert result["chamfer"] == pytest.approx(gap, rel=0.02)
        assert result["pred_to_gt"] == pytest.approx(gap, rel=0.02)
        assert result["gt_to_pred"] == pytest.approx(gap, rel=0.02)
        if gap == 0.05:
            assert result["fscore@0.1"] == 1.0
        else:
            assert result["fscore@0.05"] == result["precision@0.05"] == result["recall@0.05"] == 0.0


def test_volume_iou_of_concentric_spheres() -> None:
    inner, outer = _sphere(0.4), _sphere(0.5)
    iou = volume_iou((inner.vertices, inner.faces), (outer.vertices, outer.faces))
    assert iou == pytest.approx(0.8**3, rel=0.03)
    assert volume_iou((outer.vertices, outer.faces), (outer.vertices, outer.faces)) == 1.0


def test_volume_iou_of_disjoint_boxes_is_zero() -> None:
    a, b = _box((0, 0, 0), (1, 1, 1)), _box((1.5, 0, 0), (2.5, 1, 1))
    assert volume_iou((a.vertices, a.faces), (b.vertices, b.faces)) == 0.0


def test_volume_iou_survives_a_hole() -> None:
    """A sphere with its top cap cut off (hole radius 0.3) still counts as nearly the whole ball."""
    sphere = _sphere(0.5)
    keep = sphere.triangles_center[:, 2] < 0.4
    iou = volume_iou((sphere.vertices, sphere.faces[keep]), (sphere.vertices, sphere.faces))
    assert iou > 0.95


def test_occupancy_counts_overlaps_and_settles_ties_by_winding_number() -> None:
    left, right = _sphere(0.5, (-0.25, 0, 0)), _sphere(0.5, (0.25, 0, 0))
    both = trimesh.util.concatenate([left, right])  # self-intersecting: winding number 2 in the overlap
    at_origin = [np.array([0.0])] * 3
    assert occupancy_grid(both.vertices, both.faces, at_origin)[0, 0, 0]
    assert winding_numbers(both.vertices, both.faces, np.zeros((1, 3)))[0] == pytest.approx(2.0)

    # A cube missing its -x, -y, -z faces: every interior point gets 3 inside votes out of 6.
    cube = _box((-1, -1, -1), (1, 1, 1))
    open_cube = cube.faces[(cube.triangles_center > -0.99).all(axis=1)]
    near_closed_corner = [np.array([0.6])] * 3
    near_open_corner = [np.array([-0.6])] * 3
    assert occupancy_grid(cube.vertices, open_cube, near_closed_corner)[0, 0, 0]
    assert not occupancy_grid(cube.vertices, open_cube, near_open_corner)[0, 0, 0]


def _look_at_projection(centre: np.ndarray, focal: float, size: int) -> np.ndarray:
    """World -> pixel (3, 4) for an OpenCV camera at ``centre`` looking at the origin (z up)."""
    forward = -centre / np.linalg.norm(centre)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # world -> camera
    intrinsics = np.array([[focal, 0.0, size / 2], [0.0, focal, size / 2], [0.0, 0.0, 1.0]])
    return intrinsics @ np.concatenate([rotation, -rotation @ centre[:, None]], axis=1)


def _sphere_mask(projection: np.ndarray, centre: np.ndarray, radius: float, size: int) -> np.ndarray:
    """Pixels whose ray from the camera centre passes within ``radius`` of the origin."""
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    pixels = np.stack([cols, rows, np.ones_like(cols)], axis=-1)
    directions = pixels @ np.linalg.inv(projection[:, :3]).T
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    closest = -centre - (directions @ -centre)[..., None] * directions
    return np.linalg.norm(closest, axis=-1) < radius


def _sphere_rig(radius: float, focals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masks and projections of a sphere at the origin from Fibonacci cameras at distance 1.2, 256x256."""
    views = len(focals)
    k = np.arange(views) + 0.5
    z = 1.0 - 2.0 * k / views
    azimuth = np.pi * (1.0 + 5.0**0.5) * k
    ring = np.sqrt(1 - z**2)
    centres = 1.2 * np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)
    projections = np.stack([_look_at_projection(c, f, 256) for c, f in zip(centres, focals)])
    masks = np.stack([_sphere_mask(p, c, radius, 256) for p, c in zip(projections, centres)])
    return masks, projections


@pytest.mark.parametrize("zoomed", [False, True])
def test_visual_hull_of_a_sphere_contains_it_and_is_tight(zoomed: bool) -> None:
    """Radius 0.4 (silhouette radius 99 px) from 32 views; ``zoomed`` puts every 4th view at focal 600,
    where the silhouette (212 px) overflows the frame, and the border must not carve the sphere."""
    radius, resolution = 0.4, 80
    focals = np.where(zoomed & (np.arange(32) % 4 == 0), 600.0, 280.0)
    masks, projections = _sphere_rig(radius, focals)
    assert zoomed == bool(masks[:, [0, -1]].any() or masks[:, :, [0, -1]].any())
    bounds = np.array([[-0.6] * 3, [0.6] * 3])
    vertices, faces = visual_hull(masks, projections, resolution, bounds)

    hull = trimesh.Trimesh(vertices, faces, process=False)
    assert hull.is_watertight and hull.volume > 0  # closed, normals outwards
    assert hull.volume / (4 / 3 * np.pi * radius**3) == pytest.approx(1.0, abs=0.03)
    step = 1.2 / (resolution - 1)  # the surface may sit up to half a step inside the carved grid
    sphere = _sphere(radius)
    inner = sample_surface(sphere.vertices, sphere.faces, 300, seed=0) * (1 - step / radius)
    assert (winding_numbers(vertices, faces, inner) > 0.5).all()
    assert np.linalg.norm(vertices, axis=1).min() > radius - step


def test_psnr() -> None:
    image = np.random.default_rng(0).random((32, 32, 3))
    assert psnr(image, image) == float("inf")
    assert psnr(np.zeros((8, 8, 3)), np.full((8, 8, 3), 0.1)) == pytest.approx(20.0)


def test_ssim_identity_noise_and_window() -> None:
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:64, 0:64] / 64.0
    image = np.stack([rows, cols, 0.5 + 0.4 * np.sin(8 * rows) * np.cos(6 * cols)], axis=-1)
    assert ssim(image, image) == pytest.approx(1.0, abs=1e-12)
    mild = np.clip(image + rng.normal(0, 0.05, image.shape), 0, 1)
    strong = np.clip(image + rng.normal(0, 0.2, image.shape), 0, 1)
    assert 1.0 > ssim(image, mild) > ssim(image, strong) > 0.0

    # One grey channel, 11x11 image: exactly one valid window, checked against explicit weighted sums.
    x, y = rng.random((11, 11)), rng.random((11, 11))
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy, cxy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2, (w * x * y).sum() - mx * my
    expected = (2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4))
    assert ssim(x, y) == pytest.approx(expected, rel=1e-10)
