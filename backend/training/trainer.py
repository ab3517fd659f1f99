"""The resumable trainer: the 2D/3D CNNs and both MLPs end to end, the view source frozen.

Every step draws one object and one rig from a generator seeded by (seed, step), so a resumed
run sees exactly the data it would have seen. The run folder is itself a checkpoint the
add-on can select (``model.safetensors`` + ``config.json``), plus ``training_state.safetensors``
/ ``training_state.json`` (optimizer and step) and ``log.jsonl`` (one JSON object per logged step).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..checkpoints import load_reconstructor, save_checkpoint
from ..evaluation.curves import plot_training_curves
from ..files import atomic_write
from ..models import One2345Reconstructor, ReconstructorConfig, VolumeField
from ..models.neus_renderer import render_rays
from ..progress import ProgressCallback, no_progress
from .losses import LossWeights, reconstruction_losses
from .rays import sample_rays
from .samples import TrainingSample, make_sample
from .sources import ObjectSource

STATE_WEIGHTS = "training_state.safetensors"
STATE_META = "training_state.json"
LOG_FILE = "log.jsonl"
CURVES_FILE = "curves.png"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000
    lr: float = 2e-4
    lr_floor: float = 0.1  # cosine decay to lr * lr_floor
    grad_clip: float = 1.0
    rays: int = 512
    random_sdf_points: int = 1024
    sdf_points: int = 4096
    anneal_steps: int = 2_500  # NeuS cosine-annealing ratio 0 -> 1 (reference: 25k of 215k)
    sparseness_ramp_steps: int = 5_000  # reference: 50k
    mask_start: int = 5_000  # reference: 50k
    polar_range: tuple[float, float] = (45.0, 120.0)
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    weights: LossWeights = field(default_factory=LossWeights)
    model: ReconstructorConfig = field(default_factory=ReconstructorConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Cosine decay with a floor, as the reference actually trains (its milestone settings are ignored)."""
    progress = min(step / max(config.steps, 1), 1.0)
    return config.lr * (config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


class StepSamples(torch.utils.data.Dataset):
    """Item ``step`` is that step's sample, built on the CPU (in loader workers) from seed (seed, step)."""

    def __init__(self, source: ObjectSource, config: TrainConfig) -> None:
        self.source = source
        self.config = config

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> TrainingSample:
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.config.seed, step])
        obj = self.source.object(int(rng.integers(2**31)), torch.device("cpu"))
        return make_sample(obj, rng, self.config.polar_range, self.config.sdf_points)


class Trainer:
    def __init__(self, config: TrainConfig, source: ObjectSource, out_dir: str | Path, device: torch.device, resume: bool = False) -> None:
        self.config = config
        self.source = source
        self.out_dir = Path(out_dir)
        self.device = device
        self.step = 0
        if resume and (self.out_dir / STATE_META).is_file():
            model, _ = load_reconstructor(self.out_dir)
        else:
            torch.manual_seed(config.seed)
            model = One2345Reconstructor(config.model)
        self.model = model.to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        if resume and (self.out_dir / STATE_META).is_file():
            self._load_state()

    def _load_state(self) -> None:
        from safetensors.torch import load_file

        meta = json.loads((self.out_dir / STATE_META).read_text())
        tensors = load_file(str(self.out_dir / STATE_WEIGHTS), device=str(self.device))
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        self.step = int(meta["step"])

    def save(self, metrics: dict | None = None) -> None:
        from safetensors.torch import save

        provenance = {"trainer": "backend.training", "data": self.source.describe(), "train_config": self.config.to_dict()}
        save_checkpoint(self.out_dir, self.model, step=self.step, provenance=provenance, metrics=metrics or {})
        tensors, meta = _flatten_optimizer(self.optimizer.state_dict())
        atomic_write(self.out_dir / STATE_WEIGHTS, save(tensors))
        atomic_write(self.out_dir / STATE_META, json.dumps({"step": self.step, "optimizer": meta}).encode())
        if (self.out_dir / LOG_FILE).is_file() and (self.out_dir / LOG_FILE).stat().st_size:
            plot_training_curves(self.out_dir / LOG_FILE, self.out_dir / CURVES_FILE)

    def train_step(self, sample: TrainingSample) -> dict[str, float]:
        config = self.config
        sample = sample.to(self.device)
        torch.manual_seed(sample.seed)
        generator = torch.Generator(device=self.device).manual_seed(sample.seed)
        rays = sample_rays(sample, config.rays, generator)

        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(config, self.step)
        volume = self.model.encode(sample.images, sample.projections, sample.centres)
        field_ = VolumeField(self.model, volume)
        rendered = render_rays(
            field_, rays.origins, rays.directions, rays.near, rays.far, self.model.variance_network_lod0.inv_std(),
            sample.target_c2w[:3, 3], cos_anneal=min(1.0, self.step / max(config.anneal_steps, 1)), create_graph=True,
        )
        random_points = torch.rand(config.random_sdf_points, 3, device=self.device, generator=generator) * 2 - 1
        sdf_pred = self.model.sdf(sample.sdf_points, volume) if sample.sdf_points is not None else None
        losses = reconstruction_losses(
            rendered, rays, self.model.sdf(random_points, volume), config.weights,
            sparseness_ramp=min(1.0, self.step / max(config.sparseness_ramp_steps, 1)),
            mask_on=self.step >= config.mask_start, sdf_pred=sdf_pred, sdf_true=sample.sdf_values,
        )
        self.optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.step += 1
        record = {k: float(v.detach()) for k, v in losses.items()}
        fg = rays.mask > 0
        record["psnr"] = float(-10 * torch.log10(((rendered.color.detach() - rays.rgb) ** 2).mean()))
        record["fg_opacity"] = float(rendered.opacity.detach()[fg].mean()) if fg.any() else 0.0
        record["grad_norm"] = float(grad_norm)
        record["inv_std"] = float(self.model.variance_network_lod0.inv_std().detach())
        return record

    def train(
        self, progress: ProgressCallback = no_progress, stop_after: float | None = None, workers: int = 0, stop_at: int | None = None
    ) -> None:
        """Run to ``config.steps``, or stop early after ``stop_after`` seconds or at step ``stop_at``.

        Checkpoints every ``checkpoint_every`` steps and whenever it stops, so ``resume`` continues exactly.
        """
        start = time.time()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        loader = torch.utils.data.DataLoader(
            StepSamples(self.source, self.config), batch_size=None, sampler=range(self.step, min(stop_at or self.config.steps, self.config.steps)),
            num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False,
        )
        record: dict[str, float] = {}
        with (self.out_dir / LOG_FILE).open("a") as log:
            for sample in loader:
                record = self.train_step(sample)
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    record.update(step=self.step, lr=learning_rate(self.config, self.step), elapsed=round(time.time() - start, 2))
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                progress("train", self.step, self.config.steps)
                out_of_time = stop_after is not None and time.time() - start > stop_after
                if self.step % self.config.checkpoint_every == 0 or out_of_time:
                    self.save({k: record[k] for k in ("total", "color", "psnr")})
                if out_of_time:
                    return
        self.save({k: record[k] for k in ("total", "color", "psnr") if k in record})
