"""End to end: a real mesh rendered at the One-2-3-45 rig -> ``reconstruct`` -> a coloured mesh file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mcubes
import numpy as np
import pytest
import torch
import trimesh

from backend.checkpoints import save_checkpoint
from backend.extraction import drop_cavities, marching_cubes, sdf_grid
from backend.frame import ReconstructionFrame
from backend.mesh import Z_UP_TO_Y_UP, ColoredMesh, export_mesh
from backend.models import One2345Reconstructor
from backend.reconstruction import ReconstructionPipeline
from backend.render.mesh_views import render_rig_folder
from backend.views import load_view_folder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def suzanne_views(shared_meshes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_rig_folder(shared_meshes / "suzanne.obj", tmp_path_factory.mktemp("suzanne") / "views", polar=70.0, up_axis="y")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = One2345Reconstructor()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "random", model, step=0, provenance={"test": "random init"})


def _frame(views_dir: Path) -> ReconstructionFrame:
    v = load_view_folder(views_dir)
    return ReconstructionFrame.from_cameras(v.reference_c2w, v.source_c2ws, v.intrinsics, v.near_far, v.image_size)


@pytest.fixture(scope="module")
def reconstructed(suzanne_views: Path, checkpoint: Path) -> ColoredMesh:
    pipeline = ReconstructionPipeline.from_checkpoint(checkpoint, "cpu")
    return pipeline(load_view_folder(suzanne_views), 48)


def _check_mesh_file(path: Path, views_dir: Path) -> None:
    loaded = trimesh.load(path, force="mesh", process=False)
    assert len(loaded.faces) > 100
    colors = np.asarray(loaded.visual.vertex_colors)[:, :3]
    assert colors.shape == (len(loaded.vertices), 3)
    assert len(np.unique(colors, axis=0)) > 10  # colours come from the views, not one constant
    vertices = np.asarray(loaded.vertices)
    if path.suffix != ".ply":  # GLB/OBJ are y-up: rotate back to the z-up world frame
        vertices = vertices @ Z_UP_TO_Y_UP
    normalised = _frame(views_dir).to_normalised(vertices)
    assert np.abs(normalised).max() <= 1.0 + 1e-4  # inside the reconstruction cube
    assert np.linalg.norm(vertices.mean(axis=0)) < 0.5  # around the object at the world origin
    assert not list(path.parent.glob(".*.tmp"))  # no temporary files left behind


def test_reconstruct_cli_writes_coloured_glb(suzanne_views: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "mesh.glb"
    result = subprocess.run(
        [sys.executable, "-m", "backend", "reconstruct", str(suzanne_views), "-o", str(out),
         "--checkpoint", str(checkpoint), "--resolution", "48", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stderr
    _check_mesh_file(out, suzanne_views)


@pytest.mark.parametrize("suffix", [".ply", ".obj"])
def test_export_formats_keep_colours_and_frame(reconstructed: ColoredMesh, suzanne_views: Path, tmp_path: Path, suffix: str) -> None:
    path = export_mesh(reconstructed, tmp_path / f"mesh{suffix}")
    _check_mesh_file(path, suzanne_views)
    if suffix == ".ply":  # the PLY keeps the z-up world frame exactly
        np.testing.assert_allclose(trimesh.load(path, process=False).vertices, reconstructed.vertices, atol=1e-6)


def test_reconstruct_reports_bad_folder_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(tmp_path), "-o", str(tmp_path / "m.glb")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "pose.json not found" in result.stderr
    assert not (tmp_path / "m.glb").exists()


def test_bad_output_path_fails_before_any_work(suzanne_views: Path, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "backend", "reconstruct", str(suzanne_views), "-o", str(tmp_path / "no" / "m.glb")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: output folder {tmp_path / 'no'} does not exist: create it first"


def test_empty_space_skipping_gives_the_full_grid_mesh(suzanne_views: Path, checkpoint: Path) -> None:
    pipeline = ReconstructionPipeline.from_checkpoint(checkpoint, "cpu")
    _, volume = pipeline.encode(load_view_folder(suzanne_views))
    fast = marching_cubes(sdf_grid(pipeline.model, volume, 96, skip_empty=True))
    full = marching_cubes(sdf_grid(pipeline.model, volume, 96, skip_empty=False))
    assert len(full[1]) > 100
    np.testing.assert_array_equal(fast[1], full[1])
    np.testing.assert_allclose(fast[0], full[0], atol=1e-6)


def test_marching_cubes_on_the_occupied_box_gives_the_whole_grid_mesh() -> None:
    axis = np.linspace(-1.0, 1.0, 64)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    sdf = np.sqrt((x - 0.4) ** 2 + (y + 0.3) ** 2 + (z - 0.1) ** 2) - 0.35  # a sphere away from the centre
    vertices, faces = marching_cubes(sdf)
    whole_vertices, whole_faces = mcubes.marching_cubes(-sdf, 0.0)
    assert len(faces) > 1000
    np.testing.assert_array_equal(faces, whole_faces)
    np.testing.assert_allclose(vertices, whole_vertices / 63 * 2 - 1, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vertices - [0.4, -0.3, 0.1], axis=1), 0.35, atol=0.01)
    empty_vertices, empty_faces = marching_cubes(np.ones((16, 16, 16), np.float32))
    assert empty_vertices.shape == (0, 3) and empty_faces.shape == (0, 3)


def test_sealed_cavities_are_dropped_and_everything_else_kept() -> None:
    """A ball with a sealed pocket, beside a second ball: the pocket's surface goes, both outer surfaces stay whole."""
    axis = np.linspace(-1, 1, 64)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    first = np.sqrt((x + 0.45) ** 2 + y**2 + z**2)
    second = np.sqrt((x - 0.6) ** 2 + y**2 + z**2)
    solids = np.minimum(np.maximum(first - 0.45, 0.2 - first), second - 0.3).astype(np.float32)
    vertices, faces = marching_cubes(solids)
    kept_vertices, kept_faces = drop_cavities(vertices, faces)
    pieces = trimesh.Trimesh(kept_vertices, kept_faces, process=False).split(only_watertight=False)
    assert len(trimesh.Trimesh(vertices, faces, process=False).split(only_watertight=False)) == 3 and len(pieces) == 2
    assert all(piece.is_watertight and piece.volume > 0 for piece in pieces)
    expected = sorted(4 / 3 * np.pi * r**3 for r in (0.45, 0.3))
    np.testing.assert_allclose(sorted(piece.volume for piece in pieces), expected, rtol=0.03)
    assert kept_faces.max() == len(kept_vertices) - 1  # vertices compacted
    solid_only = marching_cubes(np.minimum(first - 0.45, second - 0.3).astype(np.float32))  # no pocket: nothing to drop
    assert all(np.array_equal(a, b) for a, b in zip(drop_cavities(*solid_only), solid_only))


def test_batch_statistics_switch_leaves_buffers_untouched(suzanne_views: Path, checkpoint: Path) -> None:
    views = load_view_folder(suzanne_views)
    pipeline = ReconstructionPipeline.from_checkpoint(checkpoint, "cpu")
    before = {k: v.clone() for k, v in pipeline.model.state_dict().items()}
    _, batch_volume = pipeline.encode(views)
    pipeline.norm_statistics = "running"
    _, running_volume = pipeline.encode(views)
    for key, value in pipeline.model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.allclose(batch_volume.latent, running_volume.latent)
    pipeline.norm_statistics = "batch"
    _, again = pipeline.encode(views)
    torch.testing.assert_close(again.latent, batch_volume.latent)
