"""A pure-PyTorch triangle rasterizer, so test and training views render anywhere torch runs (no GL, no Blender).

Cameras are OpenCV (x right, y down, z forward) with One-2-3-45's pixel convention: a point projects
to ``u = fx * x / z + cx`` and pixel ``u`` is centred exactly there (no half-pixel offset). Every
triangle is expanded into the pixels of its screen bounding box in one batch (chunked to bound
memory); a z-buffer built with ``scatter_reduce`` keeps the nearest surface. Nothing is culled,
since real meshes often have inconsistent winding; triangles reaching behind ``NEAR_EPSILON``
are dropped rather than clipped, which is harmless for cameras that look at an object from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

NEAR_EPSILON = 1e-6
# Barycentric slack so pixel centres exactly on a shared edge never fall through both triangles.
EDGE_TOLERANCE = -1e-5
# Light direction (towards the light) in camera coordinates: above-left of the camera, y pointing down.
DEFAULT_LIGHT = (-0.3, -0.5, -1.0)
DEFAULT_AMBIENT = 0.35


@dataclass
class Fragments:
    """What covers each pixel for one camera; background pixels have face -1, zero barycentrics and depth."""

    face_index: Tensor  # (H, W) long
    barycentrics: Tensor  # (H, W, 3) perspective-correct
    depth: Tensor  # (H, W) camera z (planar depth)
    w2c: Tensor  # (4, 4) OpenCV world-to-camera the fragments were rasterised with
    intrinsics: Tensor  # (3, 3)

    @property
    def mask(self) -> Tensor:
        return self.face_index >= 0


def _pixel_rays(intrinsics: Tensor, height: int, width: int) -> Tensor:
    """Camera-space directions (H, W, 3) through every pixel centre, with z = 1."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=intrinsics.dtype, device=intrinsics.device),
        torch.arange(width, dtype=intrinsics.dtype, device=intrinsics.device),
        indexing="ij",
    )
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)
    return pixels @ torch.linalg.inv(intrinsics).T


def to_camera(vertices: Tensor, w2c: Tensor) -> Tensor:
    return vertices @ w2c[:3, :3].T + w2c[:3, 3]


def _pixel_to_weights(tri_cam: Tensor, intrinsics: Tensor) -> Tensor:
    """Per-triangle maps (F, 3, 3) from a pixel (u, v, 1) to q = b / depth.

    The ray r = K^-1 (u, v, 1) has z = 1, so the surface point ``depth * r`` equals ``sum b_i P_i``
    and q = P^-1 r: its sum is 1 / depth and q / sum(q) are the perspective-correct barycentrics.
    P^-1 is written with cross products so edge-on triangles give large values instead of an error.
    """
    p0, p1, p2 = tri_cam.unbind(1)
    rows = torch.stack([torch.cross(p1, p2, dim=-1), torch.cross(p2, p0, dim=-1), torch.cross(p0, p1, dim=-1)], 1)
    det = (p0 * rows[:, 0]).sum(-1)
    return rows / det[:, None, None] @ torch.linalg.inv(intrinsics)


def rasterize(
    vertices: Tensor,
    faces: Tensor,
    w2c: Tensor,
    intrinsics: Tensor,
    height: int,
    width: int,
    max_pairs: int = 1 << 20,
) -> Fragments:
    """Rasterise a mesh (world vertices (V, 3), faces (F, 3)) into one OpenCV camera.

    ``max_pairs`` bounds how many (triangle, pixel) candidates are evaluated at once; it trades
    memory for speed and never changes the result.
    """
    dtype = vertices.dtype if vertices.is_floating_point() else torch.float32
    vertices = vertices.to(dtype)
    device = vertices.device
    w2c, intrinsics, faces = w2c.to(vertices), intrinsics.to(vertices), faces.to(device=device, dtype=torch.long)

    tri_cam = to_camera(vertices, w2c)[faces]  # (F, 3, 3)
    tri_z = tri_cam[..., 2]
    tri_screen = ((tri_cam / tri_z.clamp(min=NEAR_EPSILON)[..., None]) @ intrinsics.T)[..., :2]
    weights_map = _pixel_to_weights(tri_cam, intrinsics)

    lo = tri_screen.amin(1).ceil()
    hi = tri_screen.amax(1).floor()
    x0 = lo[:, 0].clamp(min=0).long()
    y0 = lo[:, 1].clamp(min=0).long()
    nx = (hi[:, 0].clamp(max=width - 1).long() - x0 + 1).clamp(min=0)
    ny = (hi[:, 1].clamp(max=height - 1).long() - y0 + 1).clamp(min=0)
    e1, e2 = tri_screen[:, 1] - tri_screen[:, 0], tri_screen[:, 2] - tri_screen[:, 0]
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    drawable = (tri_z > NEAR_EPSILON).all(1) & (area.abs() > 1e-12)
    counts = torch.where(drawable, nx * ny, torch.zeros_like(nx))

    face_ids = torch.nonzero(counts > 0).squeeze(1)
    starts = torch.cumsum(counts[face_ids], 0) - counts[face_ids]
    chunk_sizes = [n for n in torch.bincount(starts // max_pairs).tolist() if n] if len(face_ids) else []

    pixels, depths, owners, barys = [], [], [], []
    for ids in torch.split(face_ids, chunk_sizes):
        cnt = counts[ids]
        owner = torch.repeat_interleave(ids, cnt)
        k = torch.arange(len(owner), device=device) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        row_length = nx[owner]
        px = x0[owner] + k % row_length
        py = y0[owner] + torch.div(k, row_length, rounding_mode="floor")
        m = weights_map[owner]
        q = m[..., 0] * px[:, None].to(dtype) + m[..., 1] * py[:, None].to(dtype) + m[..., 2]
        inv_depth = q.sum(1)
        inside = (inv_depth > 0) & (q >= EDGE_TOLERANCE * inv_depth[:, None]).all(1)
        q, inv_depth = q[inside], inv_depth[inside]
        pixels.append((py * width + px)[inside])
        depths.append(1.0 / inv_depth)
        owners.append(owner[inside])
        barys.append(q / inv_depth[:, None])

    num_pixels = height * width
    zbuf = torch.full((num_pixels,), torch.inf, dtype=dtype, device=device)
    face_index = torch.full((num_pixels,), -1, dtype=torch.long, device=device)
    barycentrics = torch.zeros((num_pixels, 3), dtype=dtype, device=device)
    if pixels:
        pixel, depth, owner, bary = (torch.cat(x) for x in (pixels, depths, owners, barys))
        zbuf.scatter_reduce_(0, pixel, depth, "amin")
        nearest = depth == zbuf[pixel]
        # Exact depth ties (a shared edge seen edge-on) go to the highest face index, deterministically.
        face_index.scatter_reduce_(0, pixel[nearest], owner[nearest], "amax")
        chosen = nearest & (owner == face_index[pixel])
        barycentrics[pixel[chosen]] = bary[chosen]
    depth_map = torch.where(face_index >= 0, zbuf, torch.zeros_like(zbuf))
    return Fragments(
        face_index.view(height, width),
        barycentrics.view(height, width, 3),
        depth_map.view(height, width),
        w2c,
        intrinsics,
    )


def interpolate(fragments: Fragments, faces: Tensor, attributes: Tensor) -> Tensor:
    """Per-pixel (H, W, C) values of per-vertex attributes (V, C); zero on background."""
    corner_values = attributes[faces[fragments.face_index.clamp(min=0)]]  # (H, W, 3, C)
    values = (fragments.barycentrics[..., None] * corner_values).sum(-2)
    return values * fragments.mask[..., None]


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookup of a texture (Ht, Wt, C) at uv (H, W, 2), OpenGL convention (v up), repeating."""
    uv = uv - uv.floor()
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)
    image = texture.permute(2, 0, 1)[None].to(uv)
    sampled = F.grid_sample(image, grid[None], mode="bilinear", padding_mode="border", align_corners=False)
    return sampled[0].permute(1, 2, 0)


def shade(
    fragments: Fragments,
    vertices: Tensor,
    faces: Tensor,
    vertex_colors: Tensor | None = None,
    uv: Tensor | None = None,
    texture: Tensor | None = None,
    light_dir_cam: tuple[float, float, float] = DEFAULT_LIGHT,
    ambient: float = DEFAULT_AMBIENT,
) -> Tensor:
    """Two-sided Lambert + ambient colour (H, W, 3) in [0, 1] on a white background, as One-2-3-45 inputs are.

    Albedo comes from ``vertex_colors`` (V, 3) or from ``uv`` (V, 2) with ``texture`` (Ht, Wt, 3+).
    Face normals are flipped towards the viewer, so inconsistent winding shades correctly.
    """
    if (vertex_colors is None) == (texture is None or uv is None):
        raise ValueError("pass either vertex_colors or both uv and texture")
    dtype, faces = fragments.depth.dtype, faces.to(device=fragments.depth.device, dtype=torch.long)
    if vertex_colors is not None:
        albedo = interpolate(fragments, faces, vertex_colors.to(fragments.depth))
    else:
        albedo = sample_texture(texture[..., :3], interpolate(fragments, faces, uv.to(fragments.depth)))

    tri = to_camera(vertices.to(fragments.w2c), fragments.w2c)[faces]
    normals = F.normalize(torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1), dim=-1)
    normal = normals[fragments.face_index.clamp(min=0)]
    rays = _pixel_rays(fragments.intrinsics, *fragments.face_index.shape)
    normal = torch.where(((normal * rays).sum(-1, keepdim=True) > 0), -normal, normal)
    light = F.normalize(torch.tensor(light_dir_cam, dtype=dtype, device=normal.device), dim=0)
    lambert = (normal @ light).clamp(min=0)[..., None]
    rgb = (albedo * (ambient + (1 - ambient) * lambert)).clamp(0, 1)
    return torch.where(fragments.mask[..., None], rgb, torch.ones_like(rgb))


def render_rgba(fragments: Fragments, vertices: Tensor, faces: Tensor, **shading: Any) -> Tensor:
    """uint8 RGBA (H, W, 4): ``shade``'s white-composited colour with alpha = coverage."""
    rgb = shade(fragments, vertices, faces, **shading)
    rgba = torch.cat([rgb, fragments.mask[..., None].to(rgb)], dim=-1)
    return (rgba * 255).round().to(torch.uint8)
