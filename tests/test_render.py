"""The PyTorch rasterizer against analytic projections, and One-2-3-45 folders rendered from the shared meshes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cameras import INTRINSICS, OPENGL_TO_OPENCV, look_at_c2w, rig_c2ws
from backend.render import load_normalised_mesh, rasterize, render_rgba, render_rig_folder, render_view, shade

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes"
SPOT = MESHES / "spot" / "spot_triangulated.obj"
SPOT_TEXTURE = MESHES / "spot" / "spot_texture.png"
SIZE = 256
K = torch.tensor(INTRINSICS, dtype=torch.float32)
CUBE_FACES = torch.tensor(
    [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
     [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
)


pytestmark = pytest.mark.usefixtures("one_thread")


def cube(half: float, centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Vertex i has x, y, z = -half or +half by bits 2, 1, 0 of i."""
    bits = torch.tensor([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], dtype=torch.float32)
    return (bits * 2 - 1) * half + torch.tensor(centre)


def rig_w2c(polar: float, azimuth: float) -> torch.Tensor:
    return torch.tensor(np.linalg.inv(look_at_c2w(polar, azimuth) @ OPENGL_TO_OPENCV), dtype=torch.float32)


def project(points: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    return torch.stack([K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2], K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]], 1)


def convex_hull(points: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise hull (in image coordinates) of 2D points, by Andrew's monotone chain."""
    pts = sorted(map(tuple, points.tolist()))

    def half(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        chain: list[tuple[float, float]] = []
        for p in seq:
            while len(chain) >= 2 and (chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1]) - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0]) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return torch.tensor(half(pts) + half(pts[::-1]))


def test_cube_footprint_matches_analytic_projection() -> None:
    # A convex object's silhouette is the hull of its projected corners: every pixel centre inside it is covered.
    vertices, w2c = cube(0.25), rig_w2c(60.0, 30.0)
    mask = rasterize(vertices, CUBE_FACES, w2c, K, SIZE, SIZE).mask
    corners = project(vertices, w2c)
    hull = convex_hull(corners)
    v, u = torch.meshgrid(torch.arange(SIZE, dtype=torch.float32), torch.arange(SIZE, dtype=torch.float32), indexing="ij")
    centres = torch.stack([u, v], -1).reshape(-1, 1, 2)
    edges = hull.roll(-1, 0) - hull
    normals = torch.stack([-edges[:, 1], edges[:, 0]], 1) / edges.norm(dim=1, keepdim=True)
    margin = ((centres - hull) * normals).sum(-1).amin(1).reshape(SIZE, SIZE)
    clear = margin.abs() > 1e-3
    assert torch.equal(mask[clear], (margin > 0)[clear])
    vs, us = torch.nonzero(mask, as_tuple=True)
    assert abs(us.min() - corners[:, 0].min()) <= 1 and abs(us.max() - corners[:, 0].max()) <= 1
    assert torch.cdist(hull, torch.stack([us, vs], 1).float()).amin(1).max() <= 1.5


def test_depth_is_planar_camera_z() -> None:
    fragments = rasterize(cube(0.5, (0.0, 0.0, 3.0)), CUBE_FACES, torch.eye(4), K, SIZE, SIZE)
    assert fragments.depth[128, 128].item() == pytest.approx(2.5, abs=1e-5)
    assert fragments.mask[128, 128] and not fragments.mask[0, 0]


def test_tilted_plane_is_perspective_correct() -> None:
    # The plane z = 2 + 0.5 x seen from the origin: along ray (rx, ry, 1) the depth is 2 / (1 - 0.5 rx).
    corners = torch.tensor([[-3.0, -3.0, 0.0], [3.0, -3.0, 0.0], [0.0, 3.0, 0.0]])
    corners[:, 2] = 2 + 0.5 * corners[:, 0]
    fragments = rasterize(corners, torch.tensor([[0, 1, 2]]), torch.eye(4), K, SIZE, SIZE)
    for u, v in [(128, 128), (20, 200), (240, 60), (90, 10)]:
        ray = torch.tensor([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], 1.0])
        depth = 2 / (1 - 0.5 * ray[0])
        assert fragments.depth[v, u].item() == pytest.approx(depth.item(), rel=1e-5)
        point = fragments.barycentrics[v, u] @ corners
        torch.testing.assert_close(point, depth * ray, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("near_first", [True, False])
def test_nearest_triangle_wins(near_first: bool) -> None:
    near = torch.tensor([[-1.0, -1.0, 2.0], [1.0, -1.0, 2.0], [0.0, 1.0, 2.0]])
    far = near * torch.tensor([2.0, 2.0, 1.5])
    vertices = torch.cat([near, far] if near_first else [far, near])
    fragments = rasterize(vertices, torch.tensor([[0, 1, 2], [3, 4, 5]]), torch.eye(4), K, SIZE, SIZE)
    assert fragments.face_index[128, 128].item() == (0 if near_first else 1)
    assert fragments.depth[128, 128].item() == pytest.approx(2.0)


def test_background_is_white_and_uncovered() -> None:
    vertices = torch.tensor([[-0.1, -0.1, 2.0], [0.1, -0.1, 2.0], [0.0, 0.1, 2.0]])
    faces = torch.tensor([[0, 1, 2]])
    fragments = rasterize(vertices, faces, torch.eye(4), K, SIZE, SIZE)
    rgba = render_rgba(fragments, vertices, faces, vertex_colors=torch.tensor([[1.0, 0, 0]] * 3))
    assert rgba[0, 0].tolist() == [255, 255, 255, 0]
    assert not fragments.mask[0, 0] and fragments.face_index[0, 0] == -1 and fragments.depth[0, 0] == 0
    assert rgba[128, 128, 3] == 255 and rgba[128, 128, 0] > rgba[128, 128, 1]


def test_barycentrics_are_convex_weights() -> None:
    fragments = rasterize(cube(0.3), CUBE_FACES, rig_w2c(75.0, 200.0), K, SIZE, SIZE)
    bary = fragments.barycentrics[fragments.mask]
    assert len(bary) > 1000
    torch.testing.assert_close(bary.sum(-1), torch.ones(len(bary)))
    assert bary.min() >= -1e-4
    assert fragments.barycentrics[~fragments.mask].abs().max() == 0


def test_chunking_does_not_change_the_result() -> None:
    vertices, w2c = cube(0.3), rig_w2c(75.0, 200.0)
    whole = rasterize(vertices, CUBE_FACES, w2c, K, SIZE, SIZE)
    chunked = rasterize(vertices, CUBE_FACES, w2c, K, SIZE, SIZE, max_pairs=1000)
    assert torch.equal(whole.face_index, chunked.face_index) and torch.equal(whole.depth, chunked.depth)


def test_winding_does_not_matter() -> None:
    vertices, w2c = cube(0.3), rig_w2c(60.0, 120.0)
    colours = torch.rand(8, 3, generator=torch.Generator().manual_seed(0))
    images = []
    for faces in (CUBE_FACES, CUBE_FACES.flip(1)):
        images.append(render_rgba(rasterize(vertices, faces, w2c, K, SIZE, SIZE), vertices, faces, vertex_colors=colours))
    # Only depth ties on shared edges may resolve differently, the vertex order changing the rounding.
    assert ((images[0].int() - images[1].int()).abs().amax(-1) > 1).float().mean() < 1e-3


def test_texture_lookup_is_upright() -> None:
    # A camera-facing square with uv (0, 0) at its bottom-left; texel row 0 is the top of the image.
    vertices = torch.tensor([[-1.0, 1.0, 2.0], [1.0, 1.0, 2.0], [1.0, -1.0, 2.0], [-1.0, -1.0, 2.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    texture = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]], [[0, 0, 1.0], [1.0, 1.0, 0]]])
    fragments = rasterize(vertices, faces, torch.eye(4), K, SIZE, SIZE)
    rgb = shade(fragments, vertices, faces, uv=uv, texture=texture, light_dir_cam=(0.0, 0.0, -1.0))
    for (v, u), texel in {(30, 30): (0, 0), (30, 220): (0, 1), (220, 30): (1, 0), (220, 220): (1, 1)}.items():
        torch.testing.assert_close(rgb[v, u], texture[texel], atol=1e-4, rtol=0)


def test_normalised_mesh_is_unit_sized_and_upright() -> None:
    mesh = load_normalised_mesh(SPOT, up_axis="y")
    assert mesh.extents.max() == pytest.approx(1.0)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)
    # Spot's horns are its highest point along the file's y axis; after the rotation they are at the top.
    horns = mesh.vertices[mesh.vertices[:, 2] > 0.45]
    assert len(horns) and abs(horns[:, 0].mean()) < 0.05
    assert len(np.unique(mesh.visual.vertex_colors, axis=0)) > 50


def test_glb_texture_and_ply_colours_survive_loading(tmp_path: Path) -> None:
    spot = load_normalised_mesh(SPOT, up_axis="y", texture=SPOT_TEXTURE)
    spot.export(tmp_path / "spot.glb")
    reloaded = load_normalised_mesh(tmp_path / "spot.glb")
    c2w = look_at_c2w(60.0, 210.0)
    difference = np.abs(render_view(reloaded, c2w)[0].astype(int) - render_view(spot, c2w)[0].astype(int))
    assert difference.mean() < 1.0
    suzanne = load_normalised_mesh(MESHES / "suzanne.obj")
    suzanne.visual.vertex_colors = [200, 10, 10, 255]
    suzanne.export(tmp_path / "suzanne.ply")
    assert (load_normalised_mesh(tmp_path / "suzanne.ply").visual.vertex_colors[:, :3] == [200, 10, 10]).all()


def test_render_view_is_deterministic() -> None:
    mesh = load_normalised_mesh(MESHES / "suzanne.obj", up_axis="y")
    first, second = render_view(mesh, look_at_c2w(60.0, 30.0)), render_view(mesh, look_at_c2w(60.0, 30.0))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[1].dtype == np.float32 and first[1][first[0][..., 3] > 0].min() > 0.5


def read_views(folder: Path) -> dict[str, np.ndarray]:
    names = json.loads((folder / "pose.json").read_text())["c2ws"]
    assert list(names) == list(rig_c2ws(60.0))
    files = sorted((folder / "stage1_8").glob("*.png")) + sorted((folder / "stage2_8").glob("*.png"))
    assert len(list((folder / "stage1_8").glob("*.png"))) == 8 and len(files) == 40
    return {f.name: np.asarray(Image.open(f)) for f in files}


@pytest.mark.parametrize(
    ("mesh_path", "texture"), [(MESHES / "suzanne.obj", None), (SPOT, SPOT_TEXTURE)], ids=["suzanne", "spot"]
)
def test_rig_folder_shows_the_object_in_every_view(tmp_path: Path, mesh_path: Path, texture: Path | None) -> None:
    views = read_views(render_rig_folder(mesh_path, tmp_path, polar=60.0, up_axis="y", texture=texture))
    for name, image in views.items():
        assert image.shape == (SIZE, SIZE, 3), name
        # Shaded colours never reach pure white, so non-white pixels are the object.
        area = (image < 255).any(-1).mean()
        assert 0.02 < area < 0.6, (name, area)
    if texture is not None:
        pixels = np.concatenate([im[(im < 255).any(-1)] for im in views.values()]).astype(np.float32) / 255
        dark = (pixels.max(-1) < 0.35).mean()  # the black patches
        warm = ((pixels[:, 0] > 0.6) & (pixels[:, 0] - pixels[:, 2] > 0.05)).mean()  # cream hide and pink nose
        assert dark > 0.02 and warm > 0.3, (dark, warm)
