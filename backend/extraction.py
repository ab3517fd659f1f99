"""Mesh extraction: SDF on a res^3 grid, marching cubes at level 0, vertex colours from the views.

The grid is ``linspace(-1, 1, res)`` per axis, evaluated in chunks so memory stays bounded
at any resolution. Vertex colours use the colour network with every source view and the
surface normal (normalised SDF gradient) as the viewing direction, as the reference does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .models import ConditionalVolume, One2345Reconstructor
from .progress import ProgressCallback, no_progress

GRID_CHUNK = 64**3
COLOR_CHUNK = 8192
BLOCK = 4  # fine cells per coarse block edge
SAFETY = 3.0  # refine blocks whose corners come within SAFETY block diagonals of the surface


def flat_to_points(flat: torch.Tensor, resolution: int) -> torch.Tensor:
    """Normalised points of flat grid indices (x slowest, z fastest; linspace(-1, 1, res) per axis)."""
    ijk = torch.stack([flat // resolution**2, (flat // resolution) % resolution, flat % resolution], dim=1)
    return ijk.float() * (2.0 / (resolution - 1)) - 1.0


Field = Callable[[torch.Tensor], torch.Tensor]  # points (N, 3) -> (N,) signed distance-like values, negative inside
Carve = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (points, SDF) -> the SDF cut by what the views allow


@torch.no_grad()
def evaluate_points(field: Field, flat: torch.Tensor, resolution: int, stage: str, progress: ProgressCallback) -> torch.Tensor:
    """``field`` at the given flat grid indices, in bounded chunks."""
    out = torch.empty(flat.shape[0], device=flat.device)
    chunks = range(0, flat.shape[0], GRID_CHUNK)
    for n, start in enumerate(chunks):
        part = flat[start : start + GRID_CHUNK]
        out[start : start + len(part)] = field(flat_to_points(part, resolution))
        progress(stage, n + 1, len(chunks))
    return out


def _block_axes(resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coarse sample indices along one axis and, per fine index, the two blocks whose closure holds it."""
    coarse = list(range(0, resolution, BLOCK))
    if coarse[-1] != resolution - 1:
        coarse.append(resolution - 1)
    blocks = len(coarse) - 1
    fine = torch.arange(resolution)
    upper = (fine // BLOCK).clamp(max=blocks - 1)
    lower = (torch.div(fine + BLOCK - 1, BLOCK, rounding_mode="floor") - 1).clamp(0, blocks - 1)
    return torch.tensor(coarse), lower, upper


def field_grid(
    field: Field, resolution: int, device: torch.device, progress: ProgressCallback = no_progress, name: str = "sdf",
    skip_empty: bool = True,
) -> torch.Tensor:
    """A distance-like field on the res^3 grid -> (res, res, res) tensor on ``device``, indexed [x, y, z].

    With ``skip_empty`` the field is first sampled every ``BLOCK`` cells; only blocks whose corners
    change sign or come near zero are evaluated exactly. Elsewhere the grid holds the block's mean
    corner value, which has the right sign, so marching cubes yields the same mesh as the full grid.
    Progress stages are "{name} grid", or "{name} coarse" then "{name} surface".
    """
    total = resolution**3
    if not skip_empty or resolution <= 4 * BLOCK:
        flat = torch.arange(total, device=device)
        return evaluate_points(field, flat, resolution, f"{name} grid", progress).view((resolution,) * 3)
    coarse, lower, upper = (t.to(device) for t in _block_axes(resolution))
    cx, cy, cz = torch.meshgrid(coarse, coarse, coarse, indexing="ij")
    corners = (cx * resolution + cy) * resolution + cz
    coarse_values = evaluate_points(field, corners.reshape(-1), resolution, f"{name} coarse", progress).view(corners.shape)
    shifts = [coarse_values[i : coarse_values.shape[0] - 1 + i, j : coarse_values.shape[1] - 1 + j, k : coarse_values.shape[2] - 1 + k]
              for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    stacked = torch.stack(shifts)
    threshold = SAFETY * BLOCK * (2.0 / (resolution - 1)) * 3**0.5
    refine = (stacked.amin(0) <= 0) & (stacked.amax(0) >= 0) | (stacked.abs().amin(0) < threshold)
    grid = stacked.mean(0)[upper[:, None, None], upper[None, :, None], upper[None, None, :]]
    near = torch.zeros((resolution,) * 3, dtype=torch.bool, device=device)
    for ax in (lower, upper):
        for ay in (lower, upper):
            for az in (lower, upper):
                near |= refine[ax[:, None, None], ay[None, :, None], az[None, None, :]]
    flat = near.view(-1).nonzero()[:, 0]
    grid.view(-1)[flat] = evaluate_points(field, flat, resolution, f"{name} surface", progress)
    return grid


def sdf_grid(
    model: One2345Reconstructor,
    volume: ConditionalVolume,
    resolution: int,
    progress: ProgressCallback = no_progress,
    skip_empty: bool = True,
    carve: Carve | None = None,
) -> np.ndarray:
    """The network's SDF on the res^3 grid -> (res, res, res) float32 array indexed [x, y, z] (``field_grid``);
    with ``carve``, the SDF cut by the views (``silhouette.HullCarver``)."""

    def sdf(points: torch.Tensor) -> torch.Tensor:
        values = model.sdf(points, volume)
        return values if carve is None else carve(points, values)

    return field_grid(sdf, resolution, volume.latent.device, progress, "sdf", skip_empty).cpu().numpy()


def occupied_box(mask: np.ndarray, pad: int) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every True of ``mask``, grown by ``pad`` and clipped to it; None if empty."""
    box = []
    for axis, size in enumerate(mask.shape):
        span = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if len(span) == 0:
            return None
        box.append(slice(max(int(span[0]) - pad, 0), min(int(span[-1]) + pad + 1, size)))
    return tuple(box)


def marching_cubes(sdf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set of u = -SDF with PyMCubes; vertices returned in normalised [-1, 1] coordinates.

    Only the box around the grid points with SDF <= 0, one point wider each way, can hold a sign change, so
    only that box is triangulated: the same mesh as the whole grid, in a fraction of the time.
    """
    import mcubes

    box = occupied_box(sdf <= 0, 1)
    if box is None:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    vertices, faces = mcubes.marching_cubes(-sdf[box], 0.0)
    vertices = (vertices + np.array([axis.start for axis in box])) / (sdf.shape[0] - 1) * 2.0 - 1.0
    return vertices.astype(np.float32), faces.astype(np.int64)


def drop_cavities(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mesh without the surfaces of cavities sealed inside the solid.

    Pictures cannot see inside a solid, so a sealed pocket of positive SDF is the network's error (a bubble), never
    something the views showed; its surface only adds hidden triangles. Marching cubes orients every closed surface
    with its normals leaving the solid, so an outer surface encloses positive volume and a cavity's, facing into the
    pocket, negative: connected pieces of negative signed volume are dropped and the vertices compacted.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return vertices, faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    graph = coo_matrix((np.ones(len(edges), np.int8), (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2)
    count, labels = connected_components(graph, directed=False)
    triangles = vertices[faces].astype(np.float64)
    volume = np.einsum("ij,ij->i", triangles[:, 0], np.cross(triangles[:, 1], triangles[:, 2]))  # 6x signed volume
    piece = labels[faces[:, 0]]
    keep = (np.bincount(piece, weights=volume, minlength=count) >= 0)[piece]
    if keep.all():
        return vertices, faces
    used = np.zeros(len(vertices), bool)
    used[faces[keep]] = True
    index = np.cumsum(used) - 1
    return vertices[used], index[faces[keep]].astype(faces.dtype)


def vertex_colors(
    model: One2345Reconstructor, volume: ConditionalVolume, vertices: np.ndarray, progress: ProgressCallback = no_progress
) -> np.ndarray:
    """uint8 colours (V, 3): normals from the SDF gradient, all source views blended."""
    device = volume.latent.device
    colors = np.empty((len(vertices), 3), dtype=np.uint8)
    chunks = range(0, len(vertices), COLOR_CHUNK)
    for n, start in enumerate(chunks):
        points = torch.from_numpy(vertices[start : start + COLOR_CHUNK]).to(device)
        _, grad = model.sdf_and_gradient(points, volume)
        with torch.no_grad():
            normals = grad / grad.norm(dim=1, keepdim=True).clamp(min=1e-12)
            rgb, _ = model.colors(points, normals, volume)
        colors[start : start + len(points)] = (rgb.clamp(0, 1) * 255).to(torch.uint8).cpu().numpy()
        progress("vertex colours", n + 1, len(chunks))
    return colors
