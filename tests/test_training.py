"""The trainer: losses fall on a fixed sample, checkpoints load as reconstructors, resume is exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.checkpoints import load_reconstructor
from backend.errors import CheckpointError
from backend.models import ReconstructorConfig
from backend.training.samples import make_sample
from backend.training.sources import MeshFolderSource, MixedSource, ProceduralSource
from backend.training.trainer import LOG_FILE, STATE_META, Trainer, TrainConfig, learning_rate

TINY = dict(rays=32, sdf_points=256, random_sdf_points=64, checkpoint_every=2, log_every=1,
            model=ReconstructorConfig(volume_resolution=24))


pytestmark = pytest.mark.usefixtures("one_thread")


def test_sample_geometry_is_consistent() -> None:
    """The target's true surface distance matches the SDF: points at the GT ray distance lie on the surface."""
    source = ProceduralSource(48)
    obj = source.object(3, torch.device("cpu"))
    sample = make_sample(obj, np.random.default_rng(0), sdf_points=512)
    assert sample.images.shape == (32, 3, 256, 256) and sample.target_mask.any()
    assert sample.sdf_values.shape == (512,)
    from backend.training.rays import sample_rays

    rays = sample_rays(sample, 64, torch.Generator().manual_seed(0))
    fg = rays.mask > 0
    surface = rays.origins[fg] + rays.directions[fg] * rays.distance[fg, None]
    nearest = torch.cdist(surface, sample.sdf_points[256:]).min(dim=1).values
    assert nearest.median() < 0.05  # the rendered surface sits where the mesh vertices are


def test_learning_rate_is_cosine_with_floor() -> None:
    config = TrainConfig(steps=100)
    assert learning_rate(config, 0) == pytest.approx(2e-4)
    assert learning_rate(config, 50) == pytest.approx(2e-4 * 0.55)
    assert learning_rate(config, 100) == pytest.approx(2e-5)


def test_resume_is_exact(tmp_path: Path) -> None:
    source = ProceduralSource(40)
    config = TrainConfig(steps=2, **TINY)
    Trainer(config, source, tmp_path / "straight", torch.device("cpu")).train()
    Trainer(config, source, tmp_path / "resumed", torch.device("cpu")).train(stop_at=1)
    assert json.loads((tmp_path / "resumed" / STATE_META).read_text())["step"] == 1
    resumed = Trainer(config, source, tmp_path / "resumed", torch.device("cpu"), resume=True)
    assert resumed.step == 1
    resumed.train()
    a, _ = load_reconstructor(tmp_path / "straight")
    b, info = load_reconstructor(tmp_path / "resumed")
    assert info.step == 2 and info.provenance["data"]["kind"] == "procedural"
    for key, value in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[key], value, msg=key)
    log = [json.loads(line) for line in (tmp_path / "straight" / LOG_FILE).read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["total"]) for r in log)
    with Image.open(tmp_path / "straight" / "curves.png") as curves:  # the run's training-curve plot
        assert curves.size == (840, 520) and len(set(curves.get_flattened_data())) > 10
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "straight" / "tensorboard"))
    events.Reload()
    assert [(e.step, round(e.value, 5)) for e in events.Scalars("train/total")] == [(r["step"], round(r["total"], 5)) for r in log]


def test_fine_tune_records_where_it_started_through_a_resume(tmp_path: Path) -> None:
    config = TrainConfig(steps=2, **TINY)
    Trainer(config, ProceduralSource(40), tmp_path / "base", torch.device("cpu")).train()
    Trainer(config, ProceduralSource(40), tmp_path / "tuned", torch.device("cpu"), init_from=tmp_path / "base").train(stop_at=1)
    Trainer(config, ProceduralSource(40), tmp_path / "tuned", torch.device("cpu"), resume=True).train()
    _, info = load_reconstructor(tmp_path / "tuned")
    assert info.step == 2 and info.provenance["init_from"]["checkpoint"] == str(tmp_path / "base")
    assert info.provenance["init_from"]["step"] == 2 and info.provenance["init_from"]["provenance"]["init_from"] is None
    assert load_reconstructor(tmp_path / "base")[1].provenance["init_from"] is None


def test_resume_without_saved_state_is_an_error(tmp_path: Path) -> None:
    """Resuming into an empty run folder used to train from scratch silently; now it says what is wrong."""
    with pytest.raises(CheckpointError, match="holds no training state"):
        Trainer(TrainConfig(steps=2, **TINY), ProceduralSource(40), tmp_path / "empty", torch.device("cpu"), resume=True)
    assert not (tmp_path / "empty").exists()


def test_mesh_folder_source(shared_meshes: Path, tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "suzanne.obj").symlink_to(shared_meshes / "suzanne.obj")
    source = MeshFolderSource(tmp_path / "m", "y")
    obj = source.object(0, torch.device("cpu"))
    assert obj.vertices.abs().max() <= 0.75 and obj.colors.shape == obj.vertices.shape and obj.sdf is None
    assert source.describe()["count"] == 1


def test_mixed_source_draws_from_every_part(shared_meshes: Path, tmp_path: Path) -> None:
    """Procedural objects come with SDF points, meshes without: both kinds turn up, and the run records the mix."""
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "suzanne.obj").symlink_to(shared_meshes / "suzanne.obj")
    source = MixedSource([ProceduralSource(mesh_resolution=24), MeshFolderSource(tmp_path / "m", "y")])
    rng = np.random.default_rng(0)
    with_sdf = [source.sample(rng, (60.0, 90.0), 64, with_stage1=False).sdf_points is not None for _ in range(8)]
    assert any(with_sdf) and not all(with_sdf)
    assert [part["kind"] for part in source.describe()["parts"]] == ["procedural", "meshes"]
    with pytest.raises(ValueError, match="at least two"):
        MixedSource([ProceduralSource()])


def test_mixed_training_takes_sources_from_the_frozen_generator(tmp_path: Path) -> None:
    """generated_fraction 1: every sample's 32 sources are the generator's views of its 8 stage-1 renders."""
    from backend.cameras import STAGE2_DELTAS

    from .tiny_zero123 import tiny_generator

    generator = tiny_generator(seed=0)
    config = TrainConfig(steps=1, generated_fraction=1.0, generator_steps=2, **TINY)
    sample = make_sample(ProceduralSource(40).object(5, torch.device("cpu")), np.random.default_rng(1), sdf_points=256, with_stage1=True)
    assert sample.stage1_images.shape == (8, 3, 256, 256) and sample.images.shape == (32, 3, 256, 256)
    trainer = Trainer(config, ProceduralSource(40), tmp_path / "mixed", torch.device("cpu"), view_generator=generator)
    mixed = trainer._with_sources(sample)
    expected = generator.generate(sample.stage1_images.repeat_interleave(4, dim=0), list(STAGE2_DELTAS) * 8, 2, seed=sample.seed)
    torch.testing.assert_close(mixed.images, expected)
    assert not torch.equal(mixed.images, sample.images) and torch.equal(mixed.target_rgb, sample.target_rgb)
    trainer.train()
    _, info = load_reconstructor(tmp_path / "mixed")
    assert info.step == 1 and info.provenance["train_config"]["generated_fraction"] == 1.0
    with pytest.raises(ValueError, match="no view generator"):
        Trainer(config, ProceduralSource(40), tmp_path / "none", torch.device("cpu"))
