"""The shipped small view generator: within the size limits, loads through the public pipeline, image -> mesh offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from dataclasses import replace

import numpy as np
import torch
import trimesh

from backend.cameras import STAGE1_DELTAS
from backend.generation.bundled import DEFAULT_GENERATOR, generator_folder
from backend.generation.view_bank import render_rig
from backend.generation.zero123 import START_NOISE, START_NOISED_CONDITION, Zero123Generator
from backend.training.sources import ProceduralSource

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "examples" / "spot_photo.png"  # spot is held out of the generator's training meshes


def test_shipped_generator_fits_the_size_limits_and_loads() -> None:
    files = [p for p in DEFAULT_GENERATOR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert len(weights) == 4 and all(p.stat().st_size < 16e6 for p in files)
    assert sum(p.stat().st_size for p in files) <= 40e6
    generator = Zero123Generator.from_folder(generator_folder(None))
    assert generator.unet.config.in_channels == 8 and generator.vae.config.latent_channels == 4


def _foreground_colour(images: torch.Tensor) -> torch.Tensor:
    """Mean RGB of the non-white pixels of (N, 3, H, W) views in [0, 1]."""
    foreground = (images < 0.9).any(1, keepdim=True)
    return (images * foreground).sum((0, 2, 3)) / foreground.sum()


def test_shipped_generator_keeps_the_objects_colours() -> None:
    """Its latents are not zero-mean, so it must start from the noised input latent (sampler.json): from pure
    noise the same network paints objects green. Four procedural objects it never saw, in four colours."""
    generator = Zero123Generator.from_folder(generator_folder(None))
    assert generator.sampler.start == START_NOISED_CONDITION
    errors: dict[str, list[float]] = {START_NOISED_CONDITION: [], START_NOISE: []}
    for seed in (90_000_001, 90_000_004, 90_000_006, 90_000_009):
        rig = render_rig(ProceduralSource(64).object(seed, torch.device("cpu")), 70.0, 256, torch.device("cpu"))
        truth = _foreground_colour(rig.images[1:5].float() / 255)
        for start, values in errors.items():
            generator.sampler = replace(generator.sampler, start=start)
            views = generator.generate(rig.images[0].float() / 255, [STAGE1_DELTAS[k] for k in range(1, 5)], steps=10, seed=0)
            values.append(float((_foreground_colour(views) - truth).abs().max()))
    kept, from_noise = (float(np.mean(v)) for v in errors.values())
    assert kept < 0.1 and from_noise > 2 * kept, errors


def test_one_photo_becomes_a_coloured_mesh_with_no_configuration(tmp_path: Path) -> None:
    out = tmp_path / "spot.glb"
    result = subprocess.run(
        [sys.executable, "-m", "backend", "image2mesh", str(PHOTO), "-o", str(out), "--steps", "20", "--polar", "70",
         "--resolution", "64", "--device", "cpu", "--views-dir", str(tmp_path / "views")],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "views" / "stage2_8").iterdir())) == 32
    assert json.loads((tmp_path / "views" / "pose.json").read_text())["generated"] is True  # so reconstruct won't carve
    mesh = trimesh.load(out, force="mesh", process=False)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    assert len(mesh.faces) > 100 and colors.shape[0] == len(mesh.vertices) and colors.std() > 1
