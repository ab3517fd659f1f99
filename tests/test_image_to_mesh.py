"""One image -> mesh end to end with a tiny random Zero123 (the diffusers test pattern) on a real PNG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from backend.cameras import INPUT_AZIMUTH, STAGE1_DELTAS, look_at_c2w
from backend.checkpoints import save_checkpoint
from backend.image_to_mesh import ImageToMeshPipeline
from backend.models import One2345Reconstructor
from backend.reconstruction import ReconstructionPipeline
from backend.render.mesh_views import load_normalised_mesh, render_view
from backend.views import load_view_folder

from .tiny_zero123 import tiny_generator

os.environ["HF_HUB_OFFLINE"] = "1"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def photo(shared_meshes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A photo-like RGBA render of spot on transparency, off-centre in a larger frame."""
    spot = shared_meshes / "spot"
    mesh = load_normalised_mesh(spot / "spot_triangulated.obj", "y", texture=spot / "spot_texture.png")
    rgba, _ = render_view(mesh, look_at_c2w(70.0, 140.0, 1.6), size=256)
    canvas = np.zeros((320, 400, 4), np.uint8)
    canvas[20:276, 90:346] = rgba
    path = tmp_path_factory.mktemp("photo") / "spot photo é.png"
    Image.fromarray(canvas, "RGBA").save(path)
    return path


@pytest.fixture(scope="module")
def random_reconstructor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random-initialised reconstruction network: its geometric init yields a sphere for any views."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "init", One2345Reconstructor(), step=0)


@pytest.fixture(scope="module")
def zero123_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("zero123") / "tiny"
    tiny_generator(seed=0).save_folder(folder)
    return folder


class EchoGenerator:
    """Returns each conditioning image darkened by a per-pose amount: lets the test check what the pipeline asks for."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[float, float]], int, torch.Tensor]] = []

    def generate(self, image, poses, steps, seed=None, progress=None):
        conditions = image if image.ndim == 4 else image[None].expand(len(poses), -1, -1, -1)
        self.calls.append((list(poses), steps, conditions.clone()))
        return conditions * torch.linspace(1.0, 0.5, len(poses)).view(-1, 1, 1, 1)


def test_schedule_with_a_given_polar_is_one_batch_per_stage(photo: Path, tmp_path: Path) -> None:
    generator = EchoGenerator()
    pipeline = ImageToMeshPipeline(generator, ReconstructionPipeline.from_checkpoint(None, "cpu"))
    result = pipeline(photo, polar=80.0, resolution=32, views_dir=tmp_path / "views")
    poses = [c[0] for c in generator.calls]
    assert poses[0] == [STAGE1_DELTAS[k] for k in (0, 1, 2, 3, 8, 9, 10, 11)]  # polar > 75: the second ring goes up
    assert poses[1] == [(-10.0, 0.0), (10.0, 0.0), (0.0, -10.0), (0.0, 10.0)] * 8
    assert [c[1] for c in generator.calls] == [75, 50]
    stage1, conditions = generator.calls[0][2] * torch.linspace(1.0, 0.5, 8).view(-1, 1, 1, 1), generator.calls[1][2]
    for i in range(8):  # the nearby views of stage-1 view i are conditioned on that view (8-bit, near-white snapped)
        for j in range(4):
            kept = stage1[i] < 250 / 255
            assert (conditions[4 * i + j] - stage1[i])[kept].abs().max() <= 1.01 / 255
    assert result.polar == 80.0 and result.polar_source == "given"
    meta = json.loads((tmp_path / "views" / "pose.json").read_text())
    assert list(meta["c2ws"])[:8] == ["0.png", "1.png", "2.png", "3.png", "8.png", "9.png", "10.png", "11.png"]
    np.testing.assert_allclose(meta["c2ws"]["0.png"], look_at_c2w(80.0, INPUT_AZIMUTH), atol=1e-9)
    assert len(list((tmp_path / "views" / "stage2_8").iterdir())) == 32
    # the recentred input: white background, object in the middle
    arr = np.asarray(result.input_image)
    assert arr.shape == (256, 256, 3) and (arr[:5] == 255).all() and (arr[128] < 250).any()


def test_reconstruction_sees_exactly_the_saved_view_folder(photo: Path, tmp_path: Path) -> None:
    pipeline = ImageToMeshPipeline(EchoGenerator(), ReconstructionPipeline.from_checkpoint(None, "cpu"))
    result = pipeline(photo, polar=70.0, resolution=48, views_dir=tmp_path / "views")
    again = pipeline.reconstruction(load_view_folder(tmp_path / "views"), 48)
    assert len(result.mesh.faces) > 100
    np.testing.assert_array_equal(result.mesh.vertices, again.vertices)
    np.testing.assert_array_equal(result.mesh.faces, again.faces)
    np.testing.assert_array_equal(result.mesh.colors, again.colors)


def test_schedule_with_an_estimated_polar_follows_the_reference_order(photo: Path) -> None:
    generator = EchoGenerator()
    pipeline = ImageToMeshPipeline(generator, ReconstructionPipeline.from_checkpoint(None, "cpu"))
    result = pipeline(photo, resolution=32)
    poses = [c[0] for c in generator.calls]
    assert result.polar_source in ("estimated", "fallback")
    ring = (4, 5, 6, 7) if result.polar <= 75 else (8, 9, 10, 11)
    assert poses[0] == [STAGE1_DELTAS[k] for k in (0, 1, 2, 3)]
    assert poses[1] == [(-10.0, 0.0), (10.0, 0.0), (0.0, -10.0), (0.0, 10.0)]  # view 0's nearby views give the polar angle
    assert poses[2] == [STAGE1_DELTAS[k] for k in ring]
    assert len(poses[3]) == 28 and [c[1] for c in generator.calls] == [75, 50, 75, 50]


def test_image2mesh_cli_with_tiny_random_models(photo: Path, zero123_folder: Path, random_reconstructor: Path, tmp_path: Path) -> None:
    out = tmp_path / "spot.glb"
    result = subprocess.run(
        [sys.executable, "-m", "backend", "image2mesh", str(photo), "-o", str(out), "--zero123", str(zero123_folder),
         "--checkpoint", str(random_reconstructor),
         "--steps", "2", "--resolution", "48", "--device", "cpu", "--views-dir", str(tmp_path / "views")],
        cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stderr and "polar" in result.stderr
    mesh = trimesh.load(out, force="mesh", process=False)
    assert len(mesh.faces) > 0 and np.asarray(mesh.visual.vertex_colors).shape[0] == len(mesh.vertices)
    assert (tmp_path / "views" / "pose.json").is_file() and len(list((tmp_path / "views" / "stage1_8").iterdir())) == 8


def test_missing_generator_folder_is_one_clear_line(photo: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "backend", "image2mesh", str(photo), "-o", str(tmp_path / "m.glb"),
                             "--zero123", str(tmp_path / "no zero123")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no zero123" in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize("switch", ["--compile", "--compile-all"])
def test_compiling_off_cuda_is_one_clear_line_and_writes_nothing(photo: Path, zero123_folder: Path, tmp_path: Path, switch: str) -> None:
    out = tmp_path / "m.glb"
    result = subprocess.run([sys.executable, "-m", "backend", "image2mesh", str(photo), "-o", str(out), "--zero123", str(zero123_folder),
                             "--device", "cpu", switch], cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert "needs a CUDA device, not cpu: drop --compile / --compile-all" in errors[0]
    assert not out.exists()
