"""Where training samples come from: procedural shapes (with exact SDFs) or a folder of meshes, rendered on the fly,
a rendered training set on disk (``dataset_format.RenderedFolderSource``), or an even mix of these (``MixedSource``)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..render.mesh_views import load_normalised_mesh, procedural_colors
from .procedural import random_object
from .samples import SceneObject, TrainingSample, make_sample

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")


class SampleSource(Protocol):
    def sample(self, rng: np.random.Generator, polar_range: tuple[float, float], sdf_points: int, with_stage1: bool) -> TrainingSample: ...

    def describe(self) -> dict: ...


class RenderingSource:
    """Objects rendered at the rig as they are drawn: each sample is a new object from a seed."""

    def object(self, seed: int, device: torch.device) -> SceneObject:
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, polar_range: tuple[float, float], sdf_points: int, with_stage1: bool) -> TrainingSample:
        obj = self.object(int(rng.integers(2**31)), torch.device("cpu"))
        return make_sample(obj, rng, polar_range, sdf_points, with_stage1=with_stage1)


class ProceduralSource(RenderingSource):
    """Endless random compositions of primitives; each seed is one object."""

    def __init__(self, mesh_resolution: int = 96) -> None:
        self.mesh_resolution = mesh_resolution

    def object(self, seed: int, device: torch.device) -> SceneObject:
        obj = random_object(seed, device)
        vertices, faces, colors = obj.mesh(self.mesh_resolution)
        return SceneObject(
            torch.as_tensor(vertices, device=device), torch.as_tensor(faces, device=device),
            torch.as_tensor(colors, dtype=torch.float32, device=device), obj.sdf,
        )

    def describe(self) -> dict:
        return {"kind": "procedural", "mesh_resolution": self.mesh_resolution}


class MeshFolderSource(RenderingSource):
    """A user's mesh collection: each seed picks a mesh and a random turn about the vertical axis."""

    def __init__(self, folder: str | Path, up_axis: str = "z") -> None:
        self.folder = Path(folder)
        self.paths = sorted(p for p in self.folder.rglob("*") if p.suffix.lower() in MESH_SUFFIXES)
        if not self.paths:
            raise ValueError(f"no meshes ({', '.join(MESH_SUFFIXES)}) under {self.folder}")
        self.up_axis = up_axis
        self._cache: dict[Path, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def _load(self, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if path not in self._cache:
            mesh = load_normalised_mesh(path, self.up_axis)
            colors = getattr(mesh.visual, "vertex_colors", None)
            rgb = np.asarray(colors)[:, :3] / 255.0 if colors is not None and mesh.visual.kind == "vertex" else procedural_colors(mesh.vertices)
            self._cache[path] = (np.asarray(mesh.vertices, np.float32), np.asarray(mesh.faces, np.int64), rgb.astype(np.float32))
        return self._cache[path]

    def object(self, seed: int, device: torch.device) -> SceneObject:
        rng = np.random.default_rng(seed)
        vertices, faces, colors = self._load(self.paths[rng.integers(len(self.paths))])
        angle = rng.uniform(0, 2 * np.pi)
        turn = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]], np.float32)
        return SceneObject(torch.as_tensor(vertices @ turn.T, device=device), torch.as_tensor(faces, device=device),
                           torch.as_tensor(colors, device=device))

    def describe(self) -> dict:
        return {"kind": "meshes", "folder": str(self.folder), "count": len(self.paths), "up_axis": self.up_axis}


class MixedSource:
    """Each sample from one of ``parts``, drawn evenly: real meshes for their shapes beside procedural objects
    for their exact SDFs, say."""

    def __init__(self, parts: list[SampleSource]) -> None:
        if len(parts) < 2:
            raise ValueError("a mixed training source needs at least two sources")
        self.parts = parts

    def sample(self, rng: np.random.Generator, polar_range: tuple[float, float], sdf_points: int, with_stage1: bool) -> TrainingSample:
        return self.parts[int(rng.integers(len(self.parts)))].sample(rng, polar_range, sdf_points, with_stage1)

    def describe(self) -> dict:
        return {"kind": "mixed", "parts": [part.describe() for part in self.parts]}
