"""`render-dataset` renders a shared mesh with Blender into One-2-3-45's training layout, and training reads it back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.cameras import INTRINSICS, rig_c2ws
from backend.checkpoints import load_reconstructor
from backend.models import ReconstructorConfig
from backend.training.dataset_format import RenderedFolderSource, depth_name, source_name, target_name
from backend.training.rays import sample_rays
from backend.training.trainer import Trainer, TrainConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(shared_meshes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    meshes = tmp_path_factory.mktemp("meshes")
    (meshes / "suzanne.obj").symlink_to(shared_meshes / "suzanne.obj")
    out = tmp_path_factory.mktemp("dataset") / "set"
    done = subprocess.run([sys.executable, "-m", "backend", "render-dataset", str(meshes), str(out), "--up-axis", "y", "--seed", "3"],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return out


def test_blender_renders_the_documented_layout(dataset: Path) -> None:
    split = json.loads((dataset / "split.json").read_text())
    assert split == {"train": [{"folder_id": "000-000", "uid": "suzanne"}], "val": []}
    folder = dataset / "000-000" / "suzanne"
    expected = {target_name(i) for i in range(8)} | {depth_name(i) for i in range(8)} | {"pose.json"}
    expected |= {source_name(k, j) for k in range(8) for j in range(4)}
    assert {p.name for p in folder.iterdir()} == expected
    pose = json.loads((folder / "pose.json").read_text())
    np.testing.assert_allclose(pose["intrinsics"], INTRINSICS)
    assert pose["near_far"] == [0.5, 1.8] and 45 <= pose["polar"] <= 120 and len(pose["c2ws"]) == 40
    np.testing.assert_allclose(pose["c2ws"][source_name(7, 3)], list(rig_c2ws(pose["polar"]).values())[-1])
    for i in range(8):
        depth = np.asarray(Image.open(folder / depth_name(i)))
        rgb = np.asarray(Image.open(folder / target_name(i)).convert("RGB"))
        assert depth.dtype == np.uint16 and rgb.shape == (256, 256, 3)
        foreground = depth > 0
        assert 500 < depth[foreground].min() and depth.max() < 1800  # planar depth in mm inside near/far (0.5-1.8)
        # Blender's colours and the rasterizer's depth see the same object in the same place
        assert ((rgb < 245).any(-1) == foreground).mean() > 0.97 and rgb[foreground].std() > 10


def test_training_reads_the_rendered_set(dataset: Path, tmp_path: Path) -> None:
    source = RenderedFolderSource(dataset)
    sample = source.sample(np.random.default_rng(0), (45.0, 120.0), 0, with_stage1=True)
    assert sample.images.shape == (32, 3, 256, 256) and sample.stage1_images.shape == (8, 3, 256, 256)
    rays = sample_rays(sample, 256, torch.Generator().manual_seed(0))
    fg = rays.mask > 0
    surface = rays.origins[fg] + rays.directions[fg] * rays.distance[fg, None]
    assert surface.abs().max() < 1.0  # the target's depth puts its surface inside the normalised volume
    config = TrainConfig(steps=1, rays=32, sdf_points=0, random_sdf_points=64, model=ReconstructorConfig(volume_resolution=24))
    Trainer(config, source, tmp_path / "run", torch.device("cpu")).train()
    _, info = load_reconstructor(tmp_path / "run")
    assert info.step == 1 and info.provenance["data"] == {"kind": "rendered folder", "folder": str(dataset), "subset": "train", "count": 1}
