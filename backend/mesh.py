"""The coloured triangle mesh the backend returns, and its export to GLB, PLY and OBJ.

Axes: PLY keeps the reconstruction world frame (z up), as One-2-3-45 writes ``mesh.ply``.
GLB and OBJ are y-up by convention (glTF mandates +Y up), so they are rotated by
(x, y, z) -> (x, z, -y): a proper rotation, not the reference's mirror, so Blender's
importers (which undo exactly this rotation) bring the object back z-up and un-mirrored.
Files are written atomically: a temporary file in the same folder, then a rename.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import atomic_write, probe_writable
from .errors import InputError

EXPORT_FORMATS = (".glb", ".ply", ".obj")
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass
class ColoredMesh:
    """Vertices (V, 3) float32 in the z-up world frame, faces (F, 3) int64, colours (V, 3) uint8."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray

    def to_trimesh(self, y_up: bool = False):
        import trimesh

        vertices = self.vertices @ Z_UP_TO_Y_UP.T if y_up else self.vertices
        rgba = np.concatenate([self.colors, np.full((len(self.colors), 1), 255, np.uint8)], axis=1)
        return trimesh.Trimesh(vertices, self.faces, vertex_colors=rgba, process=False)


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Fail before any work if the mesh could not be written there (format, folder, permission, an existing file)."""
    path = Path(path)
    if path.suffix.lower() not in EXPORT_FORMATS:
        raise InputError(f"cannot write {path.name}: the output must end in {', '.join(EXPORT_FORMATS)}")
    if not path.parent.is_dir():
        raise InputError(f"output folder {path.parent} does not exist: create it first")
    if path.is_dir():
        raise InputError(f"{path} is a folder: give a file name ending in {', '.join(EXPORT_FORMATS)}")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists: pass --overwrite to replace it, or choose another -o path")
    try:
        probe_writable(path.parent)
    except OSError as exc:
        raise InputError(f"output folder {path.parent} is not writable ({exc.strerror or exc}): choose another -o path") from None
    return path


def export_mesh(mesh: ColoredMesh, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write GLB, PLY or OBJ (chosen by suffix) with vertex colours, atomically; an existing file only with ``overwrite``."""
    path = check_output_path(path, overwrite)
    suffix = path.suffix.lower()
    if len(mesh.faces) == 0:
        raise InputError("the reconstruction produced no surface (the SDF never crosses zero): check the views and the checkpoint")
    tm = mesh.to_trimesh(y_up=suffix != ".ply")
    options = {"include_color": True} if suffix == ".obj" else {}
    data = tm.export(file_type=suffix[1:], **options)
    if isinstance(data, str):
        data = data.encode()
    try:
        atomic_write(path, data, overwrite)
    except FileExistsError:
        raise InputError(f"{path} appeared while the mesh was being made and was kept: pass --overwrite to replace it") from None
    return path
