"""`backend batch`: sharded over torchrun ranks (gloo on the CPU), each image once, failures listed, re-runs resume."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from backend.batch import batch_images
from backend.checkpoints import save_checkpoint
from backend.errors import BackendError
from backend.models import One2345Reconstructor

from .tiny_zero123 import tiny_generator

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_VIEWS = REPO / "examples" / "spot_views" / "stage1_8"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    tiny_generator(seed=0).save_folder(root / "zero123")
    torch.manual_seed(0)
    return root / "zero123", save_checkpoint(root / "reconstructor", One2345Reconstructor(), step=0)


def _batch(launcher: list[str], images: Path, out: Path, models: tuple[Path, Path]) -> subprocess.CompletedProcess:
    command = [*launcher, "-m", "backend", "batch", str(images), "-o", str(out), "--zero123", str(models[0]),
               "--checkpoint", str(models[1]), "--steps", "2", "--polar", "60", "--resolution", "32", "--device", "cpu"]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_batch_shards_over_ranks_lists_failures_and_resumes(models: tuple[Path, Path], tmp_path: Path) -> None:
    images = tmp_path / "my images"
    images.mkdir()
    for k in (0, 1, 2):
        shutil.copy(EXAMPLE_VIEWS / f"{k}.png", images / f"view {k}.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "meshes"

    ran = _batch([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], images, out, models)
    assert ran.returncode == 1, ran.stderr  # one image failed
    # sorted: broken, view 0, view 1, view 2 -> rank 0 takes broken and view 1, rank 1 view 0 and view 2
    assert "[0/2] broken.png failed" in ran.stderr and "[1/2] view 0.png ->" in ran.stderr
    assert "[0/2] view 1.png ->" in ran.stderr and "[1/2] view 2.png ->" in ran.stderr
    assert "3 made, 0 already there, 1 failed" in ran.stderr and "failed: broken.png:" in ran.stderr
    assert sorted(p.name for p in out.iterdir()) == ["view 0.glb", "view 1.glb", "view 2.glb"]  # nothing partial
    for mesh_file in out.iterdir():
        mesh = trimesh.load(mesh_file, force="mesh", process=False)
        assert len(mesh.faces) > 0 and np.asarray(mesh.visual.vertex_colors).shape[0] == len(mesh.vertices)

    (images / "broken.png").unlink()
    again = _batch([sys.executable], images, out, models)
    assert again.returncode == 0, again.stderr
    assert "0 made, 3 already there, 0 failed" in again.stderr


def test_batch_refuses_a_folder_without_images_or_with_clashing_names(tmp_path: Path) -> None:
    with pytest.raises(BackendError, match="no images"):
        batch_images(tmp_path)
    shutil.copy(EXAMPLE_VIEWS / "0.png", tmp_path / "a.png")
    shutil.copy(EXAMPLE_VIEWS / "0.png", tmp_path / "a.jpg")
    with pytest.raises(BackendError, match="both become a.glb"):
        batch_images(tmp_path)
