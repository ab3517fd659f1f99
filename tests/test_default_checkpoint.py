"""The bundled, trained checkpoint reconstructs a held-out real mesh (none of the shared meshes was trained on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.checkpoints import DEFAULT_CHECKPOINT, load_reconstructor
from backend.evaluation.evaluate import geometry_scores
from backend.reconstruction import ReconstructionPipeline
from backend.render.mesh_views import load_normalised_mesh, render_rig_folder
from backend.views import load_view_folder


def test_bundled_checkpoint_describes_itself() -> None:
    model, info = load_reconstructor()
    assert info.config.architecture == "one2345-lod0"
    # 7,930 steps on procedural objects, then 1,668 on procedural objects and CGAL's training meshes (BENCHMARKS.md)
    assert info.step and info.step > 1000
    assert [part["kind"] for part in info.provenance["data"]["parts"]] == ["procedural", "meshes"]
    assert info.provenance["init_from"]["step"] > 1000 and info.provenance["init_from"]["provenance"]["data"]["kind"] == "procedural"
    assert (DEFAULT_CHECKPOINT / "model.safetensors").stat().st_size < 16 * 2**20


@pytest.mark.parametrize("name", ["teapot.obj"])
def test_bundled_checkpoint_reconstructs_held_out_mesh(shared_meshes: Path, tmp_path: Path, name: str) -> None:
    views = render_rig_folder(shared_meshes / name, tmp_path / "views", polar=70.0, up_axis="y")
    mesh = ReconstructionPipeline.from_checkpoint(None, "cpu")(load_view_folder(views), 128)
    gt = load_normalised_mesh(shared_meshes / name, "y")
    scores = geometry_scores(mesh.to_trimesh(), gt)
    # measured 2026-11-25 at resolution 256: Chamfer 0.012, F@0.05 0.99, IoU 0.87 (BENCHMARKS.md)
    assert scores["chamfer"] < 0.03
    assert scores["fscore@0.05"] > 0.85
    assert scores["volume_iou"] > 0.7
    # colours come from the views: the reconstruction is as colourful as the procedural colour field
    assert np.std(mesh.colors.astype(float), axis=0).mean() > 20
