"""Mesh rendering without Blender: a PyTorch rasterizer and One-2-3-45 view folders from mesh files."""

from .mesh_views import load_normalised_mesh, procedural_colors, render_rig_folder, render_view
from .rasterizer import Fragments, interpolate, rasterize, render_rgba, sample_texture, shade

__all__ = [
    "Fragments",
    "interpolate",
    "load_normalised_mesh",
    "procedural_colors",
    "rasterize",
    "render_rgba",
    "render_rig_folder",
    "render_view",
    "sample_texture",
    "shade",
]
