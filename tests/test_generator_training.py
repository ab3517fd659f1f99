"""Our small view generator: shipping sizes, the view bank's pairs, both training phases, exact resume, export."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before diffusers/transformers read it: nothing may reach for the hub

import pytest
import torch
from safetensors.torch import load_file

from backend.cameras import STAGE1_DELTAS, STAGE2_DELTAS, relative_pose_vector, stage1_indices
from backend.cli import main
from backend.errors import CheckpointError
from backend.generation import bundled
from backend.generation.generator_trainer import (EXPORT_DIR, LOG_FILE, STATE_WEIGHTS, GeneratorTrainConfig,
                                                  GeneratorTrainer, conditioned_inputs)
from backend.generation.small_model import TINY_GENERATOR, GeneratorNetworks, SmallGeneratorConfig
from backend.generation.view_bank import RIG_VIEWS, RigObjects, ViewBank, pose_vectors, schedule_pairs
from backend.generation.zero123 import START_NOISED_CONDITION, Zero123Generator, guidance_inputs
from backend.training.sources import ProceduralSource

TINY = GeneratorTrainConfig(vae_steps=2, steps=2, vae_batch=4, batch=4, warmup=1, objects=2, refresh_every=1,
                            refresh_objects=1, mesh_resolution=24, checkpoint_every=100, log_every=1, model=TINY_GENERATOR)
CPU = torch.device("cpu")
FILE_LIMIT, TOTAL_LIMIT = 16_000_000, 40_000_000  # bytes: the shipping budget

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("generator") / "straight"
    GeneratorTrainer(TINY, out, CPU).train()
    return out


def test_default_sizes_fit_the_shipping_budget() -> None:
    with torch.device("meta"):
        networks = GeneratorNetworks(SmallGeneratorConfig())
    sizes = {name: sum(p.numel() for p in part.parameters()) * 2 for name, part in networks.named_children()}  # float16
    assert max(sizes.values()) < FILE_LIMIT and sum(sizes.values()) < TOTAL_LIMIT, sizes
    assert networks.unet.config.in_channels == 8 and networks.unet.config.sample_size == 32


def test_bank_pairs_follow_the_schedule() -> None:
    bank = ViewBank(RigObjects(3, ProceduralSource(24)), 2, 64, CPU)
    bank.load(2)
    assert bank.images.shape == (2, RIG_VIEWS, 3, 64, 64) and (bank.images[:, 0] < 200).any()
    torch.manual_seed(0)
    bank.attach_encoder(GeneratorNetworks(TINY_GENERATOR).vae.eval())
    polars = bank.angles[:, 0, 0].tolist()
    stage1 = {tuple(relative_pose_vector(*STAGE1_DELTAS[k])) for p in polars for k in stage1_indices(p)}
    stage2 = {tuple(relative_pose_vector(*d)) for d in STAGE2_DELTAS}
    for mix, expected in (((1.0, 0.0, 0.0), stage1), ((0.0, 1.0, 0.0), stage2)):
        pairs = bank.pairs(64, torch.Generator().manual_seed(0), mix)
        for pose in pairs.poses:
            assert min((pose - torch.tensor(e)).abs().max() for e in expected) < 1e-6
    # A schedule pair gets the generator's own vector: view 0 -> stage-1 view k has STAGE1_DELTAS[k].
    sources, targets = schedule_pairs()[0].unbind(1)
    poses = pose_vectors(bank.angles[0, sources], bank.angles[0, targets])
    want = torch.tensor([relative_pose_vector(*STAGE1_DELTAS[k]) for k in stage1_indices(polars[0])])
    torch.testing.assert_close(poses, want)
    # Any two views: the relative (polar, azimuth) of their absolute angles.
    a, b = bank.angles[1, 5], bank.angles[1, 30]
    torch.testing.assert_close(pose_vectors(a[None], b[None])[0], torch.tensor(relative_pose_vector(*(b - a).tolist())))


def test_dropped_rows_are_the_samplers_unconditional_branch() -> None:
    noisy, cond, token = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.randn(2, 1, 32)
    sample, context = conditioned_inputs(noisy, cond, token, torch.tensor([False, True]))
    guided_sample, guided_context = guidance_inputs(noisy, cond, token)
    torch.testing.assert_close(sample[0], guided_sample[0])  # unconditional half, row 0
    torch.testing.assert_close(sample[1], guided_sample[3])  # conditional half, row 1
    torch.testing.assert_close(context, torch.stack([guided_context[0], guided_context[3]]))


def _descend(trainer: GeneratorTrainer, losses, steps: int = 12) -> list[float]:
    """Optimise one fixed batch (same data, noise and timesteps every step)."""
    history = []
    for group in trainer.optimizer.param_groups:
        group["lr"] = 2e-3
    for _ in range(steps):
        loss = losses()["loss"]
        trainer.optimizer.zero_grad()
        loss.backward()
        trainer.optimizer.step()
        history.append(loss.item())
    return history


def test_both_phases_reduce_their_loss(tmp_path: Path) -> None:
    trainer = GeneratorTrainer(TINY, tmp_path, CPU)
    trainer.bank.load(TINY.objects)
    images = trainer.bank.views(8, torch.Generator().manual_seed(0))
    vae = _descend(trainer, lambda: trainer.vae_losses(images, torch.Generator().manual_seed(1)))
    assert vae[-1] < 0.7 * vae[0], vae
    trainer.begin_unet_phase()
    assert trainer.networks.vae.config.scaling_factor > 0 and not any(p.requires_grad for p in trainer.networks.vae.parameters())
    pairs = trainer.bank.pairs(8, torch.Generator().manual_seed(0), TINY.pair_mix)
    unet = _descend(trainer, lambda: trainer.unet_losses(pairs, torch.Generator().manual_seed(1)))
    assert unet[-1] < 0.7 * unet[0], unet


def _log(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("elapsed", "steps_per_s", "refresh_s")} for r in records]


def test_resume_repeats_the_uninterrupted_run(straight_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    GeneratorTrainer(TINY, out, CPU).train(stop_at=1)  # inside the VAE phase
    resumed = GeneratorTrainer(TINY, out, CPU, resume=True)
    assert (resumed.phase, resumed.vae_step, resumed.made) == ("vae", 1, 2)
    resumed.train(stop_at=3)  # across the phase change, into the UNet phase
    GeneratorTrainer(TINY, out, CPU, resume=True).train()
    assert _log(out) == _log(straight_run)
    assert [(r["phase"], r["step"]) for r in _log(out)] == [("vae", 1), ("vae", 2), ("unet", 1), ("unet", 2)]
    a, b = load_file(str(straight_run / STATE_WEIGHTS)), load_file(str(out / STATE_WEIGHTS))
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a)
    for key, value in a.items():
        assert torch.equal(b[key], value), key


def test_resume_without_saved_state_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="holds no training state"):
        GeneratorTrainer(TINY, tmp_path / "empty", CPU, resume=True)


def test_export_loads_as_a_zero123_generator(straight_run: Path) -> None:
    folder = straight_run / EXPORT_DIR
    weights = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values())
    assert json.loads((folder / "training.json").read_text())["step"] == TINY.steps
    generator = Zero123Generator.from_folder(folder)
    assert generator.vae.config.scaling_factor != 1.0 and generator.sampler.start == START_NOISED_CONDITION
    views = generator.generate(torch.rand(3, 64, 64), [(0.0, 90.0), (30.0, 210.0)], steps=3, seed=0)
    assert views.shape == (2, 3, 64, 64) and torch.isfinite(views).all()


def test_unet_phase_starts_from_an_exported_folder(straight_run: Path, tmp_path: Path) -> None:
    folder = straight_run / EXPORT_DIR
    trainer = GeneratorTrainer(TINY, tmp_path / "again", CPU, init_from=folder)
    assert (trainer.phase, trainer.vae_step, trainer.step) == ("unet", TINY.vae_steps, 0)
    exported = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    for key, value in exported.items():
        torch.testing.assert_close(trainer.networks.unet.state_dict()[key], value.float())
    trainer.train(stop_at=TINY.vae_steps + 1)
    assert [r["phase"] for r in _log(tmp_path / "again")] == ["unet"]
    with pytest.raises(CheckpointError, match="network sizes"):
        GeneratorTrainer(replace(TINY, model=replace(TINY_GENERATOR, embedding_dim=16)), tmp_path / "other", CPU,
                         init_from=folder)


def test_cli_trains_a_tiny_generator(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train-generator", "--out", str(out), "--tiny", "--steps-vae", "1", "--steps", "1", "--objects", "1",
            "--batch", "2", "--batch-vae", "2", "--device", "cpu"]
    assert main(args) == 0
    assert (out / EXPORT_DIR / "model_index.json").is_file() and len(list((out / "views").iterdir())) == 1


def test_default_generator_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert bundled.generator_folder(tmp_path) == tmp_path
    monkeypatch.setattr(bundled, "DEFAULT_GENERATOR", tmp_path / "missing")
    with pytest.raises(CheckpointError, match="no view generator"):
        bundled.generator_folder(None)
    monkeypatch.setattr(bundled, "DEFAULT_GENERATOR", tmp_path)
    (tmp_path / "model_index.json").write_text("{}")
    assert bundled.generator_folder(None) == tmp_path
