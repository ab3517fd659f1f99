"""The resumable trainer: the 2D/3D CNNs and both MLPs end to end, the view source frozen.

Each step trains on ``batch`` objects; global sample ``step * batch + i`` is drawn from a generator seeded by
(seed, that index), so a resumed run sees exactly the data it would have seen, and under ``torchrun`` each
rank takes its share of every step's samples (DistributedDataParallel averages the gradients), which gives
the same update as one process with the whole batch. The run folder is itself a checkpoint the
add-on can select (``model.safetensors`` + ``config.json``), plus ``training_state.safetensors``
/ ``training_state.json`` (optimizer and step) and ``log.jsonl`` (one JSON object per logged step).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..cameras import STAGE2_DELTAS
from ..checkpoints import load_reconstructor, save_checkpoint
from ..errors import CheckpointError
from ..evaluation.curves import plot_training_curves
from ..files import atomic_write
from ..generation.base import ViewGenerator
from ..models import One2345Reconstructor, ReconstructorConfig
from ..progress import ProgressCallback, no_progress
from ..distributed import DistributedContext
from .losses import LossWeights
from .objective import ScheduleState, TrainingObjective
from .run_log import LOG_FILE, RunLog
from .samples import TrainingSample
from .sources import SampleSource

STATE_WEIGHTS = "training_state.safetensors"
STATE_META = "training_state.json"
CURVES_FILE = "curves.png"


def resume_state(out_dir: Path, resume: bool) -> dict | None:
    """The run folder's saved state when ``resume`` is asked for; an error, not a silent fresh start, when it has none."""
    if not resume:
        return None
    path = out_dir / STATE_META
    if not path.is_file():
        raise CheckpointError(f"--resume: {out_dir} holds no training state ({STATE_META}); "
                              "give the folder of an interrupted run, or leave out --resume to start a new one")
    return json.loads(path.read_text())


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 20_000
    lr: float = 2e-4
    lr_floor: float = 0.1  # cosine decay to lr * lr_floor
    grad_clip: float = 1.0
    batch: int = 1  # objects per step, over all ranks (the reference: one per GPU)
    rays: int = 512
    random_sdf_points: int = 1024
    sdf_points: int = 4096
    anneal_steps: int = 2_500  # NeuS cosine-annealing ratio 0 -> 1 (reference: 25k of 215k)
    sparseness_ramp_steps: int = 5_000  # reference: 50k
    mask_start: int = 5_000  # reference: 50k
    polar_range: tuple[float, float] = (45.0, 120.0)
    generated_fraction: float = 0.0  # share of samples whose 32 sources come from the frozen view generator
    generator_steps: int = 20  # its sampler steps when it makes them
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


def schedule_state(config: TrainConfig, step: int) -> ScheduleState:
    return ScheduleState(
        cos_anneal=min(1.0, step / max(config.anneal_steps, 1)),
        sparseness_ramp=min(1.0, step / max(config.sparseness_ramp_steps, 1)),
        mask_on=step >= config.mask_start,
    )


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
    """Item ``index`` is global sample ``index`` (step * batch + i), built on the CPU (in loader workers) from seed (seed, index)."""

    def __init__(self, source: SampleSource, config: TrainConfig) -> None:
        self.source = source
        self.config = config

    def __len__(self) -> int:
        return self.config.steps * self.config.batch

    def __getitem__(self, index: int) -> TrainingSample:
        torch.set_num_threads(1)
        rng = np.random.default_rng([self.config.seed, index])
        return self.source.sample(rng, self.config.polar_range, self.config.sdf_points, self.config.generated_fraction > 0)


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        source: SampleSource,
        out_dir: str | Path,
        device: torch.device,
        resume: bool = False,
        context: DistributedContext | None = None,
        view_generator: ViewGenerator | None = None,
        init_from: str | Path | None = None,
    ) -> None:
        """``init_from`` starts a new run (step 0, fresh optimizer) from a checkpoint's weights: fine-tuning."""
        self.context = context or DistributedContext(0, 1, device)
        if config.batch % self.context.world_size:
            raise ValueError(f"--batch {config.batch} does not split evenly over {self.context.world_size} processes")
        if config.generated_fraction > 0 and view_generator is None:
            raise ValueError("generated sources were asked for (generated_fraction > 0) but no view generator was given")
        self.config = config
        self.source = source
        self.view_generator = view_generator
        self.out_dir = Path(out_dir)
        self.device = device
        self.step = 0
        saved = resume_state(self.out_dir, resume)
        # A fine-tune's checkpoints name the checkpoint it started from, with that one's step and provenance.
        self.init_from: dict | None = None
        if saved is not None or init_from is not None:
            model, info = load_reconstructor(self.out_dir if saved is not None else init_from)
            self.init_from = (info.provenance.get("init_from") if saved is not None else
                              {"checkpoint": str(init_from), "step": info.step, "provenance": info.provenance})
        else:
            torch.manual_seed(config.seed)
            model = One2345Reconstructor(config.model)
        self.model = model.to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        if saved is not None:
            self._load_state(saved)
        objective = TrainingObjective(self.model, config.weights, config.rays, config.random_sdf_points)
        self.objective: torch.nn.Module = objective
        if self.context.active:
            ids = [device] if device.type == "cuda" else None
            self.objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)

    def _load_state(self, meta: dict) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(self.out_dir / STATE_WEIGHTS), device=str(self.device))
        self.optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
        self.step = int(meta["step"])

    def save(self, metrics: dict | None = None) -> None:
        """Model, optimizer and step (rank 0 only; the other ranks hold identical weights)."""
        from safetensors.torch import save

        if not self.context.is_main:
            return
        provenance = {"trainer": "backend.training", "data": self.source.describe(), "train_config": self.config.to_dict(),
                      "processes": self.context.world_size,
                      "view_generator": str(getattr(self.view_generator, "folder", None) or type(self.view_generator).__name__)
                      if self.view_generator else None, "init_from": self.init_from}
        save_checkpoint(self.out_dir, self.model, step=self.step, provenance=provenance, metrics=metrics or {})
        tensors, meta = _flatten_optimizer(self.optimizer.state_dict())
        atomic_write(self.out_dir / STATE_WEIGHTS, save(tensors))
        atomic_write(self.out_dir / STATE_META, json.dumps({"step": self.step, "optimizer": meta}).encode())
        if (self.out_dir / LOG_FILE).is_file() and (self.out_dir / LOG_FILE).stat().st_size:
            plot_training_curves(self.out_dir / LOG_FILE, self.out_dir / CURVES_FILE)

    def train_step(self, samples: list[TrainingSample]) -> dict[str, float]:
        """One optimiser step on this rank's samples; the gradient is the mean over all ranks' samples."""
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        schedule = schedule_state(self.config, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for i, sample in enumerate(samples):
            last = i == len(samples) - 1
            sync = contextlib.nullcontext() if last or not self.context.active else self.objective.no_sync()
            with sync:
                losses = self.objective(self._with_sources(sample.to(self.device)), schedule)
                (losses["total"] / len(samples)).backward()
            for name, value in losses.items():
                totals[name] = totals.get(name, 0) + value.detach() / len(samples)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        record = {name: float(value) for name, value in totals.items()}
        record["grad_norm"] = float(grad_norm)
        record["inv_std"] = float(self.model.variance_network_lod0.inv_std().detach())
        return self.context.mean(record)

    def _with_sources(self, sample: TrainingSample) -> TrainingSample:
        """One-2-3-45's mixed training: for a seeded share of samples the frozen generator makes the 32 sources.

        Each stage-1 render conditions its 4 nearby views, exactly as at inference; poses stay the rig's, and
        the supervised target stays the ground-truth render.
        """
        fraction = self.config.generated_fraction
        if fraction <= 0 or sample.stage1_images is None or np.random.default_rng(sample.seed).random() >= fraction:
            return sample
        conditions = sample.stage1_images.repeat_interleave(len(STAGE2_DELTAS), dim=0)
        generated = self.view_generator.generate(conditions, list(STAGE2_DELTAS) * len(sample.stage1_images),
                                                 self.config.generator_steps, seed=sample.seed)
        return replace(sample, images=generated.to(sample.images.dtype))

    def _local_indices(self, stop: int) -> list[int]:
        """This rank's global sample indices for steps ``self.step .. stop - 1``, step by step."""
        share = self.config.batch // self.context.world_size
        first = self.context.rank * share
        return [s * self.config.batch + first + i for s in range(self.step, stop) for i in range(share)]

    def train(
        self, progress: ProgressCallback = no_progress, stop_after: float | None = None, workers: int = 0, stop_at: int | None = None
    ) -> None:
        """Run to ``config.steps``, or stop early after ``stop_after`` seconds or at step ``stop_at``.

        Checkpoints every ``checkpoint_every`` steps and whenever it stops, so ``resume`` continues exactly.
        """
        start = time.time()
        stop = min(stop_at or self.config.steps, self.config.steps)
        share = self.config.batch // self.context.world_size
        if self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        loader = torch.utils.data.DataLoader(
            StepSamples(self.source, self.config), batch_size=None, sampler=self._local_indices(stop),
            num_workers=workers, prefetch_factor=4 if workers else None, persistent_workers=False,
        )
        samples = iter(loader)
        record: dict[str, float] = {}
        with RunLog(self.out_dir, enabled=self.context.is_main) as log:
            while self.step < stop:
                record = self.train_step([next(samples) for _ in range(share)])
                if self.step % self.config.log_every == 0 or self.step == self.config.steps:
                    record.update(step=self.step, lr=learning_rate(self.config, self.step), elapsed=round(time.time() - start, 2))
                    log.write(self.step, record)
                progress("train", self.step, self.config.steps)
                out_of_time = self.context.any(stop_after is not None and time.time() - start > stop_after)
                if self.step % self.config.checkpoint_every == 0 or out_of_time:
                    self.save({k: record[k] for k in ("total", "color", "psnr")})
                if out_of_time:
                    return
        self.save({k: record[k] for k in ("total", "color", "psnr") if k in record})
