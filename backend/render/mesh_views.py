"""Render a mesh file into One-2-3-45 views, so the reconstruction can be tested on meshes with known shape.

Meshes are normalised the way One-2-3-45's training renders are (bounding box centred, longest side 1,
world z up) and drawn from the rig of ``backend.cameras`` onto a white background. Meshes without
colour get a smooth procedural colour field, since a flat colour leaves nothing to match across views.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import trimesh
from PIL import Image
from trimesh.visual import ColorVisuals, TextureVisuals
from trimesh.visual.material import PBRMaterial

from ..cameras import IMAGE_SIZE, INTRINSICS, OPENGL_TO_OPENCV, rig_c2ws
from ..errors import InputError
from ..views import write_view_folder
from .rasterizer import rasterize, render_rgba

# Input elevation of 30 degrees: a typical photo of an object on a table.
DEFAULT_POLAR = 60.0
# Rotation taking a y-up mesh to z-up (OBJ/glTF convention to Blender's): (x, y, z) -> (x, -z, y).
Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
UP_AXES = ("z", "y")


def procedural_colors(points: np.ndarray) -> np.ndarray:
    """Saturated RGB (N, 3) in [0, 1] whose hue cycles smoothly over a unit-sized object."""
    x, y, z = points.T
    hue = (0.9 * x + 0.6 * y + 0.4 * z + 0.15 * np.sin(2 * np.pi * 1.5 * (x - z))) % 1.0
    saturation, value = 0.7, 0.9
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    return value - value * saturation * np.clip(np.minimum(k, 4 - k), 0, 1)


def _texture_image(visual: trimesh.visual.base.Visuals) -> Image.Image | None:
    """The UV texture, or None where there is none: trimesh fills a missing one with a flat placeholder."""
    if not isinstance(visual, TextureVisuals) or visual.uv is None or visual.material is None:
        return None
    material = visual.material.to_simple() if isinstance(visual.material, PBRMaterial) else visual.material
    image = material.image
    return None if image is None or image.getcolors(1) is not None else image


def load_normalised_mesh(
    path: str | os.PathLike, up_axis: str = "z", texture: str | os.PathLike | None = None
) -> trimesh.Trimesh:
    """Load OBJ/PLY/GLB as one mesh centred in [-0.5, 0.5]^3 (longest side 1), z up, with a colour.

    ``texture`` names the UV texture image for files that do not reference one (an OBJ without .mtl).
    """
    if up_axis not in UP_AXES:
        raise ValueError(f"up_axis must be one of {UP_AXES}, not {up_axis!r}")
    try:
        mesh = trimesh.load(path, force="mesh")
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise InputError(f"cannot read mesh {path} ({exc}): use an OBJ, PLY or GLB file") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or mesh.extents.max() <= 0:
        raise InputError(f"{path} holds no triangles with extent: export the object as a triangle mesh")
    if up_axis == "y":
        mesh.apply_transform(Y_UP_TO_Z_UP)
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    mesh.apply_scale(1.0 / mesh.extents.max())

    uv = getattr(mesh.visual, "uv", None)
    if texture is not None:
        if uv is None:
            raise InputError(f"{path} has no UV coordinates, so texture {texture} cannot be applied")
        with Image.open(texture) as img:
            mesh.visual = TextureVisuals(uv=uv, image=img.convert("RGB"))
    elif _texture_image(mesh.visual) is None and not (isinstance(mesh.visual, ColorVisuals) and mesh.visual.kind):
        rgb = np.round(procedural_colors(mesh.vertices) * 255).astype(np.uint8)
        mesh.visual = ColorVisuals(mesh, vertex_colors=rgb)
    return mesh


def _albedo(mesh: trimesh.Trimesh, device: torch.device | str) -> dict[str, torch.Tensor]:
    """``shade`` keyword arguments: the UV texture when the mesh has one, else its vertex colours."""
    image = _texture_image(mesh.visual)
    if image is not None:
        texture = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        return {
            "uv": torch.as_tensor(mesh.visual.uv, dtype=torch.float32, device=device),
            "texture": torch.as_tensor(texture, device=device),
        }
    visual = mesh.visual.to_color() if isinstance(mesh.visual, TextureVisuals) else mesh.visual
    colors = np.asarray(visual.vertex_colors[:, :3], dtype=np.float32) / 255.0
    return {"vertex_colors": torch.as_tensor(colors, device=device)}


def render_view(
    mesh: trimesh.Trimesh, c2w_gl: np.ndarray, size: int = IMAGE_SIZE, device: torch.device | str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """RGBA uint8 (size, size, 4) on white and planar depth float32 (size, size), 0 on background.

    ``c2w_gl`` is an OpenGL camera-to-world as ``backend.cameras.look_at_c2w`` makes; the rig's
    intrinsics are scaled to ``size``.
    """
    w2c = np.linalg.inv(c2w_gl @ OPENGL_TO_OPENCV)
    intrinsics = INTRINSICS.copy()
    intrinsics[:2] *= size / IMAGE_SIZE
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float32, device=device)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=device)
    fragments = rasterize(
        vertices,
        faces,
        torch.as_tensor(w2c, dtype=torch.float32, device=device),
        torch.as_tensor(intrinsics, dtype=torch.float32, device=device),
        size,
        size,
    )
    rgba = render_rgba(fragments, vertices, faces, **_albedo(mesh, device))
    return rgba.cpu().numpy(), fragments.depth.cpu().numpy().astype(np.float32)


def render_rig_folder(
    mesh_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    polar: float = DEFAULT_POLAR,
    up_axis: str = "z",
    texture: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
) -> Path:
    """Write the 40 One-2-3-45 views of a mesh (RGB on white, 256x256) and pose.json into ``out_dir``."""
    mesh = load_normalised_mesh(mesh_path, up_axis, texture)
    images = {
        name: Image.fromarray(render_view(mesh, c2w, device=device)[0][..., :3])
        for name, c2w in rig_c2ws(polar).items()
    }
    return write_view_folder(out_dir, polar, images)
