"""The resumable trainer of our small view generator: the VAE first, then UNet, CLIP encoder and camera projection.

Phase 1 trains the AutoencoderKL on single rendered views (L1 + L2 reconstruction and LDM's small KL term; no
downloaded perceptual network), then sets its scaling factor from the latent spread. Phase 2 trains the UNet,
the image encoder and the camera projection jointly with Zero123's objective: epsilon prediction on the
reference noise schedule, conditioned exactly as ``Zero123Generator`` samples (unscaled posterior mode of the
input view as concat latent, one projected [CLIP embedding, relative pose] token), with classifier-free
dropout that zeroes both, as the sampler's unconditional branch does. The exported UNet, image encoder and
projection are an exponential moving average of the trained ones.

Each step's randomness comes from a generator seeded by (seed, phase, step) and the view bank's content is a
function of the step, so a resumed run repeats the uninterrupted one exactly. The run folder holds
``training_state.safetensors`` / ``.json`` (weights, EMA, optimizer, counters), ``log.jsonl``, the cached
renders (``views/``) and, in phase 2, the diffusers folder ``view_generator/`` written at every checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

from ..errors import CheckpointError
from ..files import atomic_write
from ..progress import ProgressCallback, no_progress
from ..training.sources import MeshFolderSource, ProceduralSource
from ..training.trainer import _flatten_optimizer, _unflatten_optimizer, resume_state
from .ddim import NoiseSchedule
from .small_model import GeneratorNetworks, SmallGeneratorConfig
from .view_bank import RigObjects, ViewBank, ViewPairs, image_batch
from .zero123 import Zero123Generator, clip_pixels

STATE_WEIGHTS = "training_state.safetensors"
STATE_META = "training_state.json"
LOG_FILE = "log.jsonl"
EXPORT_DIR = "view_generator"
BANK_DIR = "views"
PROVENANCE_FILE = "training.json"
VAE, UNET = "vae", "unet"


@dataclass(frozen=True)
class GeneratorTrainConfig:
    vae_steps: int = 5_000
    steps: int = 10_000  # UNet phase
    vae_batch: int = 32
    batch: int = 256  # at 32 x 32 latents a step is bound by kernel launches, not arithmetic, up to about this size
    vae_lr: float = 3e-4
    lr: float = 2e-4
    warmup: int = 300  # linear warm-up steps at the start of each phase, then cosine decay to lr * lr_floor
    lr_floor: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    kl_weight: float = 1e-6  # LDM KL-f8's weight against the per-pixel reconstruction loss
    uncond_prob: float = 0.1  # classifier-free guidance dropout: zero concat latent and zero token
    ema_decay: float = 0.999
    pair_mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # stage-1 pairs, stage-2 pairs, any two views
    objects: int = 512  # rendered objects held on the device
    refresh_every: int = 100  # steps between bank refreshes
    refresh_objects: int = 8  # new objects per refresh
    mesh_fraction: float = 0.25  # share of objects from the mesh folder, when one is given
    polar_range: tuple[float, float] = (45.0, 120.0)
    mesh_resolution: int = 96  # marching-cubes grid of procedural objects
    checkpoint_every: int = 1_000
    log_every: int = 50
    seed: int = 0
    model: SmallGeneratorConfig = field(default_factory=SmallGeneratorConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def learning_rate(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``peak`` to ``peak * floor`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def conditioned_inputs(noisy: torch.Tensor, cond_latent: torch.Tensor, token: torch.Tensor,
                       keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet sample and context per row: dropped rows get a zero concat latent AND a zero token, exactly the
    unconditional half of ``zero123.guidance_inputs``."""
    cond_latent = torch.where(keep[:, None, None, None], cond_latent, torch.zeros_like(cond_latent))
    token = torch.where(keep[:, None, None], token, torch.zeros_like(token))
    return torch.cat([noisy, cond_latent.to(noisy.dtype)], dim=1), token


class GeneratorTrainer:
    def __init__(self, config: GeneratorTrainConfig, out_dir: str | Path, device: torch.device,
                 meshes: MeshFolderSource | None = None, resume: bool = False, workers: int = 0,
                 init_from: Path | None = None) -> None:
        """``resume`` continues the run in ``out_dir`` exactly; otherwise ``init_from`` (a generator folder of the same
        sizes) skips the VAE phase and starts the UNet phase from its weights, e.g. to go on from an exported folder
        when the run's own state is lost."""
        self.config = config
        self.out_dir = Path(out_dir)
        self.device = device
        meta = resume_state(self.out_dir, resume)
        model_config = SmallGeneratorConfig.from_dict(meta["config"]["model"]) if meta else config.model
        torch.manual_seed(config.seed)
        self.networks = GeneratorNetworks(model_config).to(device)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            for module in (self.networks.unet, self.networks.vae):
                module.to(memory_format=torch.channels_last)
        self.alphas_cumprod = NoiseSchedule().alphas_cumprod().to(device)
        self.phase, self.vae_step, self.step, self.made = VAE, 0, 0, config.objects
        self.ema: list[torch.Tensor] = []
        objects = RigObjects(config.seed, ProceduralSource(config.mesh_resolution), meshes, config.mesh_fraction,
                             config.polar_range)
        self.bank = ViewBank(objects, config.objects, model_config.image_size, device, self.out_dir / BANK_DIR, workers)
        self._set_phase(VAE)
        if meta:
            self._load_state(meta)
        elif init_from is not None:
            self._load_generator(Path(init_from))

    # -- state -----------------------------------------------------------------------------------------------

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        """The parameters the current phase optimises, by state-dict name."""
        parts = ("vae.",) if self.phase == VAE else ("unet.", "image_encoder.", "projection.")
        return {name: p for name, p in self.networks.named_parameters() if name.startswith(parts)}

    def _set_phase(self, phase: str) -> None:
        self.phase = phase
        self.networks.requires_grad_(False).eval()
        trainable = self._trainable()
        for p in trainable.values():
            p.requires_grad_(True)
        for name, module in self.networks.named_children():
            module.train(any(n.startswith(name + ".") for n in trainable))
        self.optimizer = torch.optim.AdamW(list(trainable.values()), lr=self.config.lr, weight_decay=self.config.weight_decay,
                                           fused=self.device.type == "cuda")
        self.ema = [p.detach().clone() for p in trainable.values()] if phase == UNET else []

    def _load_state(self, meta: dict) -> None:
        tensors = load_file(str(self.out_dir / STATE_WEIGHTS), device=str(self.device))
        self.networks.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        self.vae_step, self.step, self.made = int(meta["vae_step"]), int(meta["step"]), int(meta["made"])
        if meta["phase"] == UNET:
            self._set_phase(UNET)
            self.networks.vae.register_to_config(scaling_factor=float(meta["scaling_factor"]))
            self.ema = [torch.empty_like(param).copy_(tensors[f"ema.{name}"]) for name, param in self._trainable().items()]
        optimizer = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
        self.optimizer.load_state_dict(_unflatten_optimizer(optimizer, meta["optimizer"]))
        for group in self.optimizer.param_groups:  # moments saved contiguous; fused AdamW wants each param's layout
            for param in group["params"]:
                for key, value in self.optimizer.state.get(param, {}).items():
                    if isinstance(value, torch.Tensor) and value.shape == param.shape:
                        self.optimizer.state[param][key] = torch.empty_like(param).copy_(value)

    def _load_generator(self, folder: Path) -> None:
        generator = Zero123Generator.from_folder(folder)
        parts = {"unet": generator.unet, "vae": generator.vae, "image_encoder": generator.image_encoder,
                 "projection": generator.projection}
        state = {f"{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
        try:
            self.networks.load_state_dict(state)
        except RuntimeError as exc:
            raise CheckpointError(f"{folder} does not have this run's network sizes ({' '.join(str(exc).split())[:200]}): "
                                  "pass --tiny exactly when the folder was trained with it") from None
        self.networks.vae.register_to_config(scaling_factor=generator.vae.config.scaling_factor)
        self.vae_step = self.config.vae_steps
        self._set_phase(UNET)

    def save(self, metrics: dict | None = None) -> None:
        """Checkpoint (weights, EMA, optimizer, counters); in the UNet phase also the exported generator folder."""
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in self.networks.state_dict().items()}
        tensors.update({f"ema.{name}": v.cpu().contiguous() for name, v in zip(self._trainable(), self.ema)})
        optimizer, optimizer_meta = _flatten_optimizer(self.optimizer.state_dict())
        tensors.update({f"optimizer.{k}": v for k, v in optimizer.items()})
        meta = {"phase": self.phase, "vae_step": self.vae_step, "step": self.step, "made": self.made,
                "scaling_factor": self.networks.vae.config.scaling_factor, "config": self.config.to_dict(),
                "data": self.bank.objects.describe(), "optimizer": optimizer_meta}
        meta["config"]["model"] = self.networks.config.to_dict()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out_dir / STATE_WEIGHTS, save(tensors))
        atomic_write(self.out_dir / STATE_META, json.dumps(meta).encode())
        if self.phase == UNET:
            self._export(metrics or {})

    def _export(self, metrics: dict) -> None:
        """Replace ``view_generator/`` with the EMA weights, written beside it first."""
        weights = self.networks.state_dict()
        weights.update(zip(self._trainable(), self.ema))
        final, fresh, old = (self.out_dir / name for name in (EXPORT_DIR, f".{EXPORT_DIR}.new", f".{EXPORT_DIR}.old"))
        for stale in (fresh, old):
            shutil.rmtree(stale, ignore_errors=True)
        self.networks.save_generator(fresh, weights)
        provenance = {"trainer": "backend.generation.generator_trainer", "vae_steps": self.vae_step, "step": self.step,
                      "objects_seen": self.made, "data": self.bank.objects.describe(), "metrics": metrics,
                      "train_config": self.config.to_dict(),
                      "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        (fresh / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
        if final.exists():
            final.rename(old)
        fresh.rename(final)
        shutil.rmtree(old, ignore_errors=True)

    # -- steps -----------------------------------------------------------------------------------------------

    def _generator(self, phase: str, step: int) -> torch.Generator:
        """The step's own random source: the same (seed, phase, step) draws the same batch, noise and dropout."""
        return torch.Generator(self.device).manual_seed((self.config.seed * 2 + (phase == UNET)) * 2**32 + step)

    def vae_losses(self, images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = image_batch(images).contiguous(memory_format=torch.channels_last)
        vae = self.networks.vae
        with self._autocast():
            posterior = vae.encode(x).latent_dist
            decoded = vae.decode(posterior.sample(generator)).sample
        error = decoded.float() - x
        l1, mse = error.abs().mean(), error.square().mean()
        kl = posterior.kl().float().mean() / x[0].numel()
        return {"loss": l1 + mse + self.config.kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}

    def unet_losses(self, pairs: ViewPairs, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Epsilon-prediction MSE at a uniform timestep, target latent drawn from its posterior and scaled."""
        nets, count = self.networks, len(pairs.poses)
        target = (pairs.target_mean + pairs.target_std * self._randn(pairs.target_mean, generator)) * nets.vae.config.scaling_factor
        noise = self._randn(target, generator)
        t = torch.randint(len(self.alphas_cumprod), (count,), device=self.device, generator=generator)
        alpha = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        noisy = alpha.sqrt() * target + (1 - alpha).sqrt() * noise
        keep = torch.rand(count, device=self.device, generator=generator) >= self.config.uncond_prob
        pixels = clip_pixels(image_batch(pairs.source_images), nets.image_encoder.config.image_size)
        with self._autocast():
            token = nets.projection(nets.image_encoder(pixel_values=pixels).image_embeds, pairs.poses).unsqueeze(1)
            sample, context = conditioned_inputs(noisy, pairs.source_latents, token, keep)
            eps = nets.unet(sample.contiguous(memory_format=torch.channels_last), t, encoder_hidden_states=context).sample
        return {"loss": F.mse_loss(eps.float(), noise)}

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 mixed precision on CUDA; float32 elsewhere (CPU runs are tests and smoke runs)."""
        return torch.autocast("cuda", torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()

    def _randn(self, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(like.shape, device=like.device, dtype=like.dtype, generator=generator)

    def _train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of the current phase; returns its losses and gradient norm (device tensors, no sync)."""
        config = self.config
        if self.phase == VAE:
            step, total, peak = self.vae_step, config.vae_steps, config.vae_lr
            generator = self._generator(VAE, step)
            losses = self.vae_losses(self.bank.views(config.vae_batch, generator), generator)
        else:
            step, total, peak = self.step, config.steps, config.lr
            generator = self._generator(UNET, step)
            losses = self.unet_losses(self.bank.pairs(config.batch, generator, config.pair_mix), generator)
        lr = learning_rate(step, total, peak, config.warmup, config.lr_floor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        params = list(self._trainable().values())
        losses["grad_norm"] = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        self.optimizer.step()
        if self.phase == VAE:
            self.vae_step += 1
        else:
            self.step += 1
            decay = min(config.ema_decay, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(self.ema, [p.detach() for p in params], 1 - decay)
        return {k: v.detach() for k, v in losses.items()}

    def begin_unet_phase(self) -> None:
        """Freeze the VAE, encode the bank with it and scale latents to unit spread (as LDM's scale_factor)."""
        vae = self.networks.vae
        self._set_phase(UNET)
        self.bank.attach_encoder(vae)
        mean, std = self.bank.latent_mean, self.bank.latent_std
        spread = (mean.var() + std.square().mean()).sqrt()
        vae.register_to_config(scaling_factor=float(1 / spread))

    # -- loop ------------------------------------------------------------------------------------------------

    def train(self, progress: ProgressCallback = no_progress, stop_after: float | None = None,
              stop_at: int | None = None) -> None:
        """Run both phases to their step counts, or stop early after ``stop_after`` seconds or at ``stop_at`` steps in all.

        Checkpoints every ``checkpoint_every`` steps, at the end of the VAE phase and whenever it stops.
        """
        start = time.time()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.bank.load(self.made, progress)
        if self.phase == UNET:
            self.bank.attach_encoder(self.networks.vae)
        try:
            with (self.out_dir / LOG_FILE).open("a") as log:
                if self.phase == VAE and not self._run_phase(log, progress, start, stop_after, stop_at):
                    return
                if self.phase == VAE:
                    self.begin_unet_phase()
                self._run_phase(log, progress, start, stop_after, stop_at)
        finally:
            self.bank.close()

    def _run_phase(self, log: TextIO, progress: ProgressCallback, start: float, stop_after: float | None,
                   stop_at: int | None) -> bool:
        """Steps of the current phase until its end (True) or a stop (False); checkpoints at both."""
        config = self.config
        total = config.vae_steps if self.phase == VAE else config.steps
        sums: dict[str, torch.Tensor] = {}
        window_start, window_steps, refresh_seconds, record = time.time(), 0, 0.0, {}

        def step_now() -> int:
            return self.vae_step if self.phase == VAE else self.step

        while step_now() < total:
            if step_now() > 0 and step_now() % config.refresh_every == 0:
                refresh_start = time.time()
                self.bank.add(config.refresh_objects)
                self.made = self.bank.made
                refresh_seconds += time.time() - refresh_start
            for key, value in self._train_step().items():
                sums[key] = sums[key] + value if key in sums else value
            window_steps += 1
            step = step_now()
            if step % config.log_every == 0 or step == total:
                now = time.time()
                record = {"phase": self.phase, "step": step, **{k: round(float(v) / window_steps, 6) for k, v in sums.items()},
                          "lr": learning_rate(step - 1, total, config.vae_lr if self.phase == VAE else config.lr,
                                              config.warmup, config.lr_floor),
                          "steps_per_s": round(window_steps / max(now - window_start, 1e-9), 3),
                          "refresh_s": round(refresh_seconds, 3), "objects": self.made, "elapsed": round(now - start, 2)}
                if self.phase == VAE:
                    record["psnr"] = round(10 * math.log10(4 / max(record["mse"], 1e-12)), 3)
                log.write(json.dumps(record) + "\n")
                log.flush()
                sums, window_start, window_steps, refresh_seconds = {}, now, 0, 0.0
            progress(f"train-{self.phase}", step, total)
            out_of_time = stop_after is not None and time.time() - start > stop_after
            stopping = out_of_time or (stop_at is not None and self.vae_step + self.step >= stop_at)
            if step % config.checkpoint_every == 0 or step == total or stopping:
                self.save(record)
            if stopping:
                return False
        return True
