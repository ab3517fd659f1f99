"""``evaluate`` on a real mesh: files, scores in range, and the reconstruction table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_cli_writes_scores_and_contact_sheet(shared_meshes: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "backend", "evaluate", "--meshes", str(shared_meshes / "suzanne.obj"), "--out", str(out),
         "--up-axis", "y", "--resolution", "64", "--device", "cpu"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    assert "| suzanne | reconstruction |" in result.stdout and "| suzanne | visual hull (32 masks) |" in result.stdout
    scores = json.loads((out / "results.json").read_text())[0]
    for method in ("reconstruction", "visual_hull"):
        s = scores[method]
        assert 0 < s["chamfer"] < 0.2 and 0 < s["volume_iou"] <= 1 and 0 <= s["fscore@0.05"] <= s["fscore@0.1"] <= 1
    assert scores["reconstruction"]["psnr"] > 12
    assert (out / "suzanne" / "views" / "pose.json").is_file()
    assert (out / "suzanne" / "reconstruction.ply").is_file()
    with Image.open(out / "suzanne" / "contact_sheet.png") as sheet:
        assert sheet.size == (7 * 256, 3 * 256)


def test_single_image_evaluation_scores_the_generated_views(shared_meshes: Path, tmp_path: Path) -> None:
    """With a view generator, the mesh comes from rig view 0 alone and the 39 generated views are scored too."""
    from .tiny_zero123 import tiny_generator

    import torch

    from backend.checkpoints import save_checkpoint
    from backend.models import One2345Reconstructor

    tiny_generator(seed=0).save_folder(tmp_path / "zero123")
    torch.manual_seed(0)
    initial = save_checkpoint(tmp_path / "init", One2345Reconstructor(), step=0)  # its geometric init: always a sphere
    out = tmp_path / "eval"
    result = subprocess.run(
        [sys.executable, "-m", "backend", "evaluate", "--meshes", str(shared_meshes / "suzanne.obj"), "--out", str(out),
         "--up-axis", "y", "--resolution", "32", "--device", "cpu", "--generator", str(tmp_path / "zero123"), "--steps", "2",
         "--checkpoint", str(initial)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    scores = json.loads((out / "results.json").read_text())[0]["reconstruction"]
    assert 0 < scores["views_psnr"] < 20 and 0 <= scores["views_ssim"] < 0.9  # random weights: views far from the truth
    assert 0 < scores["chamfer"] < 1 and scores["volume_iou"] > 0  # a sphere overlaps suzanne
    generated = out / "suzanne" / "generated"
    assert len(list((generated / "stage2_8").iterdir())) == 32 and (generated / "pose.json").is_file()
