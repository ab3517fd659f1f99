"""The shipped small view generator: within the size limits, loads through the public pipeline, image -> mesh offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import trimesh

from backend.generation.bundled import DEFAULT_GENERATOR, generator_folder
from backend.generation.zero123 import Zero123Generator

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "spot_photo.png"  # spot is held out of the generator's training meshes


def test_shipped_generator_fits_the_size_limits_and_loads() -> None:
    files = [p for p in DEFAULT_GENERATOR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == 4 and all(p.stat().st_size < 16e6 for p in files)
    assert sum(p.stat().st_size for p in files) <= 40e6
    generator = Zero123Generator.from_folder(generator_folder(None))
    assert generator.unet.config.in_channels == 8 and generator.vae.config.latent_channels == 4


def test_one_photo_becomes_a_coloured_mesh_with_no_configuration(tmp_path: Path) -> None:
    out = tmp_path / "spot.glb"
    result = subprocess.run(
        [sys.executable, "-m", "backend", "image2mesh", str(PHOTO), "-o", str(out), "--steps", "20", "--polar", "70",
         "--resolution", "64", "--device", "cpu", "--views-dir", str(tmp_path / "views")],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "views" / "stage2_8").iterdir())) == 32
    mesh = trimesh.load(out, force="mesh", process=False)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert len(mesh.faces) > 100 and colors.shape[0] == len(mesh.vertices) and colors.std() > 1
