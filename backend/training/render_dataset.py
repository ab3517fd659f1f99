"""``render-dataset``: any folder of meshes -> a training set in One-2-3-45's layout, rendered at the rig.

Each mesh is normalised (longest side ``object_size``, z up), turned about the vertical axis and given an
input polar angle, both drawn from the seed. Colour comes from Blender's Cycles (textures, materials and
vertex colours as Blender reads them), run by ``tools/blender_render_rig.py`` in a separate Blender process
so the backend never imports ``bpy``, or from the built-in PyTorch rasterizer. Depth always comes from the
rasterizer on the same normalised mesh and cameras, so it is exact whichever renderer made the colours.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import trimesh
from PIL import Image

from ..cameras import INTRINSICS, rig_c2ws
from ..errors import BackendError
from ..mesh import Z_UP_TO_Y_UP
from ..progress import ProgressCallback, no_progress
from ..render.mesh_views import load_normalised_mesh, render_view
from .dataset_format import FOLDER_ID, write_object, write_split
from .samples import NUM_STAGE1
from .sources import MESH_SUFFIXES

# The Blender side sits in the repository's tools/, outside the backend package (which never imports bpy).
BLENDER_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "blender_render_rig.py"
RENDERERS = ("blender", "builtin")
CYCLES_SAMPLES = 32


def blender_command(blender: str | None) -> list[str]:
    """How to run the Blender script: a Blender executable, or this Python when it has the ``bpy`` module."""
    if not BLENDER_SCRIPT.is_file():
        raise BackendError(f"{BLENDER_SCRIPT} is missing: run render-dataset from a checkout of the project, "
                           "or use --renderer builtin")
    if blender:
        return [blender, "-b", "--factory-startup", "--python", str(BLENDER_SCRIPT), "--"]
    if importlib.util.find_spec("bpy") is None:
        raise BackendError("the blender renderer needs Blender: pass --blender /path/to/blender, install the bpy "
                           "module (pip install bpy, Python 3.11), or use --renderer builtin")
    return [sys.executable, str(BLENDER_SCRIPT)]


def blender_colours(mesh: trimesh.Trimesh, c2ws: np.ndarray, command: list[str], work: Path) -> np.ndarray:
    """(N, H, W, 3) uint8 on white from Cycles; the mesh goes over as a GLB in glTF's y-up axes."""
    y_up = mesh.copy()
    y_up.apply_transform(np.block([[Z_UP_TO_Y_UP, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]))
    y_up.export(work / "mesh.glb")
    views = [{"c2w": c2w.tolist(), "path": str(work / f"{i:02d}.png")} for i, c2w in enumerate(c2ws)]
    job = {"mesh": str(work / "mesh.glb"), "size": int(2 * INTRINSICS[0, 2]), "focal": float(INTRINSICS[0, 0]),
           "samples": CYCLES_SAMPLES, "views": views}
    (work / "job.json").write_text(json.dumps(job))
    done = subprocess.run([*command, str(work / "job.json")], capture_output=True, text=True)
    if done.returncode != 0 or not all(Path(v["path"]).is_file() for v in views):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BackendError(f"Blender failed to render the rig (exit {done.returncode}): {tail[0][:300]}")
    rgba = np.stack([np.asarray(Image.open(v["path"]).convert("RGBA"), np.float32) / 255.0 for v in views])
    on_white = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    return np.round(on_white * 255.0).astype(np.uint8)


def render_dataset(
    mesh_dir: Path, out_dir: Path, renderer: str = "blender", up_axis: str = "z", object_size: float = 0.7,
    polar_range: tuple[float, float] = (45.0, 120.0), val_fraction: float = 0.1, seed: int = 0,
    blender: str | None = None, progress: ProgressCallback = no_progress,
) -> dict:
    """Render every mesh under ``mesh_dir`` into ``out_dir`` and write the split; returns the split."""
    if renderer not in RENDERERS:
        raise BackendError(f"unknown renderer {renderer!r}: choose one of {', '.join(RENDERERS)}")
    paths = sorted(p for p in mesh_dir.rglob("*") if p.suffix.lower() in MESH_SUFFIXES) if mesh_dir.is_dir() else []
    if not paths:
        raise BackendError(f"no meshes ({', '.join(MESH_SUFFIXES)}) under {mesh_dir}")
    names = [str(p.relative_to(mesh_dir).with_suffix("")).replace("/", "__").replace("\\", "__") for p in paths]
    command = blender_command(blender) if renderer == "blender" else None
    rng = np.random.default_rng(seed)
    for index, (path, name) in enumerate(zip(paths, names)):
        progress("render-dataset", index, len(paths))
        polar, angle = float(rng.uniform(*polar_range)), float(rng.uniform(0.0, 360.0))
        mesh = load_normalised_mesh(path, up_axis)
        mesh.apply_scale(object_size)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.radians(angle), [0, 0, 1]))
        c2ws = np.stack(list(rig_c2ws(polar).values()))
        rendered = [render_view(mesh, c2w) for c2w in c2ws]
        rgb = np.stack([rgba[..., :3] for rgba, _ in rendered])
        depth = np.stack([d for _, d in rendered[:NUM_STAGE1]])
        if command is not None:
            with tempfile.TemporaryDirectory(prefix="imageto3d-blender-") as work:
                rgb = blender_colours(mesh, c2ws, command, Path(work))
        write_object(out_dir / FOLDER_ID / name, polar, c2ws, rgb, depth)
    progress("render-dataset", len(paths), len(paths))
    return write_split(out_dir, names, val_fraction, seed)
