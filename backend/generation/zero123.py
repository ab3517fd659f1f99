"""Frozen Zero123 / Zero123-XL view generator on diffusers + transformers, conditioned exactly as the reference.

Conditioning (zero123_sparse.md A2, one2345.md 1.3): the cross-attention context is ONE token,
cc_projection([CLIP image embedding, pose vector]); the concat latent is the VAE posterior mode of the input
in [-1, 1], deliberately NOT multiplied by the scaling factor; the unconditional branch of classifier-free
guidance zeroes both the concat latent and the projected token; DDIM with eta 1 by default.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import SafetensorError
from transformers import CLIPVisionModelWithProjection

from ..cameras import relative_pose_vector
from ..errors import BackendError, CheckpointError, InputError
from ..pickled import load_tensors_only
from ..progress import ProgressCallback, no_progress
from .channel_stats_group_norm import use_channel_stats_group_norm
from .ddim import NoiseSchedule, ddim_step, ddim_timesteps
from .layout_keeping_upsample import keep_layout_when_upsampling
from .one_token_attention import use_one_token_cross_attention
from .per_image_vectors import batch_per_image_vectors
from .projection import CameraProjection, load_projection, projection_folder, save_projection
from .residual_in_gemm_block import use_residual_in_gemm_blocks

HOW_TO_GET = ("download a Zero123-XL diffusers folder such as bennyguo/zero123-xl-diffusers on a machine with internet "
              "and copy it here, or convert zero123-xl.ckpt with "
              "`python -m backend convert-zero123 CKPT OUT_DIR --clip-folder DIR`")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                     "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError, SafetensorError)
STAGE = "zero123"
SAMPLER_FILE = "sampler.json"  # our addition to the diffusers layout: how a folder's network wants sampling started
START_NOISE = "noise"
START_NOISED_CONDITION = "noised_condition"


@dataclass(frozen=True)
class SamplerConfig:
    """Sampling as One-2-3-45 runs it: guidance 3, stochastic DDIM (eta 1), and its off-by-one step count.

    ``reference_step_quirk`` reproduces the reference's timestep list (75 -> 76 steps, 50 -> 49); without it
    ``steps`` standard DDIM steps are taken.
    """

    guidance_scale: float = 3.0
    eta: float = 1.0
    reference_step_quirk: bool = True
    schedule: NoiseSchedule = field(default_factory=NoiseSchedule)
    # Where the first latent comes from. "noise" is the reference. "noised_condition" adds the conditioning
    # view's latent at the first timestep's signal level: the LDM schedule never reaches zero signal, so a
    # network trained on latents that are far from zero-mean (our small VAE's) learns to read the target's faint
    # mean colour from the noisiest input and, given pure noise, paints every object dark green.
    start: str = START_NOISE

    @classmethod
    def from_folder(cls, root: Path) -> SamplerConfig:
        """The folder's ``sampler.json`` (``{"start": ...}``), or the reference sampler when there is none."""
        path = root / SAMPLER_FILE
        if not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path} is not readable JSON ({exc}): delete it to sample as the reference does") from None
        start = values.get("start") if isinstance(values, dict) else None
        if start not in (START_NOISE, START_NOISED_CONDITION) or set(values) != {"start"}:
            raise CheckpointError(f'{path} must be {{"start": "{START_NOISE}"}} or {{"start": "{START_NOISED_CONDITION}"}}, '
                                  f"not {values!r}: delete it to sample as the reference does")
        return cls(start=start)


def clip_pixels(image: torch.Tensor, size: int) -> torch.Tensor:
    """The reference's CLIP input from a [-1, 1] batch: bicubic resize (align_corners, no antialias), [0, 1], CLIP mean/std.

    Done in torch because HF's CLIPImageProcessor (shortest-side resize + centre crop) is not bit-identical.
    """
    x = F.interpolate(image, size=(size, size), mode="bicubic", align_corners=True, antialias=False)
    mean = torch.tensor(CLIP_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x + 1) / 2 - mean) / std


def guidance_inputs(latents: torch.Tensor, cond_latent: torch.Tensor, token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """UNet sample and context for one guided step: unconditional half first (zero concat latent AND zero token), as the reference."""
    uncond = torch.cat([latents, torch.zeros_like(cond_latent)], dim=1)
    cond = torch.cat([latents, cond_latent], dim=1)
    return torch.cat([uncond, cond]), torch.cat([torch.zeros_like(token), token])


def combine_guidance(eps: torch.Tensor, scale: float) -> torch.Tensor:
    """eps_u + s (eps_c - eps_u) from the stacked [unconditional, conditional] prediction."""
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


class Zero123Generator:
    """Zero123 novel-view synthesis with frozen weights; implements ``ViewGenerator``."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        projection: CameraProjection,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        sampler: SamplerConfig = SamplerConfig(),
    ) -> None:
        _check_fit(unet, vae, image_encoder, projection)
        self.device = torch.device(device)
        self.dtype = dtype
        self.sampler = sampler
        self.unet, self.vae, self.image_encoder, self.projection = unet, vae, image_encoder, projection
        self.denoiser: torch.nn.Module = unet  # what sampling calls: the UNet itself, or its compiled form (``compile``)
        self.compiled_everything = False  # the VAE and CLIP compiled too (``compile(everything=True)``)
        self.folder: Path | None = None  # where from_folder loaded it, for provenance
        for module in (unet, vae, image_encoder, projection):
            module.to(self.device).eval().requires_grad_(False)
            if next(module.parameters()).dtype != dtype:  # diffusers warns on any dtype cast, so cast only when needed
                module.to(dtype)
        use_one_token_cross_attention(unet)  # the context is one token: skip the attention it makes trivial
        self.alphas_cumprod = sampler.schedule.alphas_cumprod().to(self.device)

    @classmethod
    def from_folder(
        cls,
        path: Path | str,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        sampler: SamplerConfig | None = None,
    ) -> Zero123Generator:
        """Load a diffusers-format Zero123 folder from disk only (``local_files_only``; nothing is downloaded).

        ``sampler`` defaults to the folder's ``sampler.json``, else the reference sampler."""
        root = Path(path)
        if not root.is_dir():
            raise CheckpointError(f"the Zero123 folder {root} does not exist: {HOW_TO_GET}")
        if not (root / "model_index.json").is_file():
            raise CheckpointError(f"{root / 'model_index.json'} is missing, so {root} is not a diffusers Zero123 folder: {HOW_TO_GET}")
        low_memory = importlib.util.find_spec("accelerate") is not None
        unet = load_component(UNet2DConditionModel, root / "unet", DIFFUSERS_WEIGHTS, HOW_TO_GET, low_cpu_mem_usage=low_memory)
        vae = load_component(AutoencoderKL, root / "vae", DIFFUSERS_WEIGHTS, HOW_TO_GET, low_cpu_mem_usage=low_memory)
        image_encoder = load_component(CLIPVisionModelWithProjection, root / "image_encoder", TRANSFORMERS_WEIGHTS, HOW_TO_GET)
        folder = projection_folder(root)
        if folder is None:
            raise CheckpointError(f"{root / 'cc_projection'} is missing (the camera projection): {HOW_TO_GET}")
        sampler = sampler or SamplerConfig.from_folder(root)
        generator = cls(unet, vae, image_encoder, load_projection(folder, HOW_TO_GET), device, dtype, sampler)
        generator.folder = root
        return generator

    def compile(self, everything: bool = False) -> None:
        """Trade start-up time for sampling speed on CUDA: a UNet channels-last throughout, fused attention
        projections, group norms that read channels-last memory in order, the transformer blocks' residual sums
        inside their output GEMMs, the per-image time projections and one-token values each from one GEMM, cuDNN
        autotuning and ``torch.compile`` of the UNet with CUDA graphs, one static graph per UNet batch shape;
        ``everything`` also compiles the VAE (channels-last) and the CLIP image tower.

        Each new batch shape compiles on its first call, so this pays only over many images in one process: the
        UNet after a few dozen, ``everything`` after hundreds (BENCHMARKS.md). cuDNN autotuning is process-wide.
        For sampling only: a compiled generator is not saved. Compiling what is already compiled does nothing."""
        if self.device.type != "cuda":
            raise BackendError(f"compiling the view generator needs a CUDA device, not {self.device}: drop --compile / --compile-all")
        if self.denoiser is self.unet:
            torch.backends.cudnn.benchmark = True
            # CUDA graphs as mode="reduce-overhead"; Inductor's own layout choice would store each up-block's
            # concatenation of skip and upsampled features channels-first, between channels-last convolutions
            self.denoiser = torch.compile(sampling_unet(self.unet), dynamic=False,
                                          options={"triton.cudagraphs": True, "layout_optimization": False})
        if everything and not self.compiled_everything:
            self.vae.to(memory_format=torch.channels_last)
            self.vae.encoder = torch.compile(self.vae.encoder, dynamic=False)
            self.vae.decoder = torch.compile(self.vae.decoder, dynamic=False)
            self.image_encoder.vision_model = torch.compile(self.image_encoder.vision_model, dynamic=False)
            self.compiled_everything = True

    def save_folder(self, path: Path | str) -> None:
        """Write the diffusers layout ``from_folder`` reads (kxic's model_index, so diffusers' community pipeline loads it too).

        Written beside the destination and renamed into place, so a failure never leaves half a model folder.
        """
        if self.denoiser is not self.unet:
            raise BackendError("a compiled view generator (fused attention weights) cannot be saved: save one loaded without --compile")
        path = Path(path)
        ensure_new_folder(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self.unet.save_pretrained(tmp / "unet")
            self.vae.save_pretrained(tmp / "vae")
            self.image_encoder.save_pretrained(tmp / "image_encoder")
            save_projection(self.projection, tmp / "cc_projection")
            schedule = self.sampler.schedule
            DDIMScheduler(num_train_timesteps=schedule.train_steps, beta_start=schedule.beta_start, beta_end=schedule.beta_end,
                          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                          prediction_type="epsilon").save_pretrained(tmp / "scheduler")
            index = {"_class_name": "Zero1to3StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
                     "cc_projection": ["pipeline_zero1to3", "CCProjection"], "feature_extractor": [None, None],
                     "image_encoder": ["transformers", "CLIPVisionModelWithProjection"], "requires_safety_checker": False,
                     "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
                     "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}
            (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
            (tmp / SAMPLER_FILE).write_text(json.dumps({"start": self.sampler.start}) + "\n")
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @torch.no_grad()
    def generate(
        self,
        image: torch.Tensor,
        poses: list[tuple[float, float]],
        steps: int,
        seed: int | None = None,
        progress: ProgressCallback = no_progress,
    ) -> torch.Tensor:
        """Views at (delta polar, delta azimuth) degrees, all poses in one UNet batch; float32 on ``self.device``.

        ``image`` is one (3, H, W) view shared by all poses, or (len(poses), 3, H, W) with one view per pose, so
        a whole One-2-3-45 stage (e.g. the 32 nearby views of 8 stage-1 views) is one batch.
        """
        if not poses:
            raise InputError("no poses were given to generate views for")
        if not (image.ndim == 3 and image.shape[0] == 3) and not (image.ndim == 4 and image.shape[:2] == (len(poses), 3)):
            raise InputError(f"the conditioning image must be (3, H, W) or ({len(poses)}, 3, H, W), not {tuple(image.shape)}")
        timesteps = ddim_timesteps(steps, self.sampler.reference_step_quirk, self.sampler.schedule.train_steps)
        generator = torch.Generator(self.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        cond_latent, token = self.conditioning(image, poses)
        latents = torch.randn(cond_latent.shape, generator=generator, device=self.device, dtype=torch.float32)
        alphas = self.alphas_cumprod
        if self.sampler.start == START_NOISED_CONDITION:
            signal = alphas[timesteps[0]]
            scaled = cond_latent.float() * self.vae.config.scaling_factor
            latents = signal.sqrt() * scaled + (1 - signal).sqrt() * latents
        # The last step lands on alphas_cumprod[0], as the reference's alphas_prev (set_alpha_to_one=False).
        for i, (t, t_prev) in enumerate(zip(timesteps, timesteps[1:] + [0])):
            sample, context = guidance_inputs(latents.to(self.dtype), cond_latent, token)
            t_batch = torch.full((len(sample),), t, device=self.device, dtype=torch.long)
            eps = self.denoiser(sample, t_batch, encoder_hidden_states=context).sample
            eps = combine_guidance(eps.float(), self.sampler.guidance_scale)
            latents = ddim_step(latents, eps, alphas[t], alphas[t_prev], self.sampler.eta, generator)
            progress(STAGE, i + 1, len(timesteps))
        decoded = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.dtype)).sample
        return ((decoded.float() + 1) / 2).clamp(0, 1)

    def conditioning(self, image: torch.Tensor, poses: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concat latent (unscaled posterior mode) and the projected context token, one row per pose."""
        x = image.to(self.device, torch.float32)
        x = (x.unsqueeze(0) if x.ndim == 3 else x) * 2 - 1
        pixels = clip_pixels(x, self.image_encoder.config.image_size).to(self.dtype)
        embedding = self.image_encoder(pixel_values=pixels).image_embeds
        pose = torch.tensor([relative_pose_vector(dp, da) for dp, da in poses], device=self.device, dtype=self.dtype)
        token = self.projection(embedding.expand(len(poses), -1), pose).unsqueeze(1)
        cond_latent = self.vae.encode(x.to(self.dtype)).latent_dist.mode()
        return cond_latent.expand(len(poses), -1, -1, -1), token


def sampling_unet(unet: UNet2DConditionModel) -> torch.nn.Module:
    """What ``Zero123Generator.compile`` compiles: ``unet`` rewritten in place for sampling (channels-last, fused
    attention projections and each rewrite of this package), or the wrapper around it that computes its
    per-image vectors. Same output up to rounding; for sampling only, after the weights are loaded."""
    unet.to(memory_format=torch.channels_last)
    unet.fuse_qkv_projections()
    use_one_token_cross_attention(unet)  # fusing reset every processor
    keep_layout_when_upsampling(unet)
    use_channel_stats_group_norm(unet)
    use_residual_in_gemm_blocks(unet)
    return batch_per_image_vectors(unet)


def ensure_new_folder(path: Path) -> None:
    """Refuse to write a model over anything already there."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise BackendError(f"{path} already exists and is not empty: choose a new folder")


def load_component(model_cls: type, folder: Path, weight_names: tuple[str, ...], how_to_get: str,
                   **kwargs: object) -> torch.nn.Module:
    """``from_pretrained`` on a local component folder; every weight must be present (no silently random layers)."""
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder / 'config.json'} is missing: {how_to_get}")
    weights = next((folder / name for name in weight_names if (folder / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{folder / weight_names[0]} is missing: {how_to_get}")
    if weights.suffix == ".bin":  # a pickle: refused here by name, where from_pretrained would only say it failed
        load_tensors_only(weights, how_to_get)
    try:
        model, info = model_cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True, **kwargs)
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"{weights} cannot be loaded ({str(exc).strip().splitlines()[0][:200]}): it is truncated or does "
                              f"not match {folder / 'config.json'}; {how_to_get}") from None
    missing = sorted(info["missing_keys"])
    if missing:
        raise CheckpointError(f"{weights} lacks {len(missing)} weights of the network (e.g. {missing[0]}): {how_to_get}")
    return model


def _check_fit(unet: UNet2DConditionModel, vae: AutoencoderKL, image_encoder: CLIPVisionModelWithProjection,
               projection: CameraProjection) -> None:
    """The components must fit each other: 8 = 2 x 4 UNet input channels, projection sizes matching CLIP and the UNet."""
    latent = vae.config.latent_channels
    problems = []
    if unet.config.in_channels != 2 * latent or unet.config.out_channels != latent:
        problems.append(f"the UNet maps {unet.config.in_channels} -> {unet.config.out_channels} channels, "
                        f"Zero123 needs {2 * latent} -> {latent}")
    if projection.context_dim != unet.config.cross_attention_dim:
        problems.append(f"the camera projection gives {projection.context_dim}-d tokens, the UNet attends to "
                        f"{unet.config.cross_attention_dim}-d")
    if projection.embedding_dim != image_encoder.config.projection_dim:
        problems.append(f"the camera projection expects {projection.embedding_dim}-d image embeddings, the CLIP "
                        f"encoder gives {image_encoder.config.projection_dim}-d")
    if problems:
        raise CheckpointError(f"the Zero123 components do not fit together ({'; '.join(problems)}): {HOW_TO_GET}")
