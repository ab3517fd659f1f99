"""Convert the original Lightning ``zero123-xl.ckpt`` into the diffusers folder ``Zero123Generator`` loads.

The ckpt is read with ``torch.load(weights_only=True)`` (memory-mapped: only the tensors used are paged in).
LDM names are mapped with diffusers' own single-file helpers; the configs are built here from
``LdmArchitecture`` (no YAML, no download). The EMA UNet weights are the ones the reference samples with.
The ckpt's CLIP tower is incomplete (the reference loads OpenAI ViT-L/14 separately), so the image encoder
comes from a local transformers folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint
from transformers import CLIPVisionModelWithProjection

from ..errors import CheckpointError
from ..pickled import load_tensors_only
from .projection import CameraProjection
from .zero123 import TRANSFORMERS_WEIGHTS, Zero123Generator, ensure_new_folder, load_component

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
VAE_PREFIX = "first_stage_model."
PROJECTION_KEYS = ("cc_projection.weight", "cc_projection.bias")
CLIP_HOW_TO_GET = ("pass --clip-folder with a local transformers CLIPVisionModelWithProjection folder of OpenAI CLIP "
                   "ViT-L/14, e.g. the image_encoder/ of lambdalabs/sd-image-variations-diffusers downloaded on a machine "
                   "with internet")
CKPT_HOW_TO_GET = "re-download zero123-xl.ckpt (huggingface One-2-3-45/code or cvlab/zero123-weights)"


@dataclass(frozen=True)
class LdmArchitecture:
    """Network sizes of the ckpt; defaults = sd-objaverse-finetune-c_concat-256.yaml (every Zero123 release).

    Smaller values describe tiny checkpoints in the same layout (tests, our own small models).
    """

    image_size: int = 256
    unet_in_channels: int = 8
    unet_out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768
    vae_channels: int = 128
    vae_channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    vae_num_res_blocks: int = 2
    latent_channels: int = 4
    scale_factor: float = 0.18215
    norm_num_groups: int = 32

    def unet_config(self) -> dict:
        """diffusers UNet2DConditionModel config: level i attends when its downsampling factor 2**i is listed."""
        attends = [2**i in self.attention_resolutions for i in range(len(self.channel_mult))]
        return {
            "sample_size": self.image_size // 2 ** (len(self.vae_channel_mult) - 1),
            "in_channels": self.unet_in_channels,
            "out_channels": self.unet_out_channels,
            "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
            "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
            "block_out_channels": [self.model_channels * m for m in self.channel_mult],
            "layers_per_block": self.num_res_blocks,
            "cross_attention_dim": self.context_dim,
            # diffusers' legacy name: for SD1-style configs this number is the head COUNT, as LDM's num_heads.
            "attention_head_dim": self.num_heads,
            "transformer_layers_per_block": self.transformer_depth,
            "use_linear_projection": False,
            "norm_num_groups": self.norm_num_groups,
        }

    def vae_config(self) -> dict:
        levels = len(self.vae_channel_mult)
        return {
            "sample_size": self.image_size,
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * levels,
            "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": [self.vae_channels * m for m in self.vae_channel_mult],
            "latent_channels": self.latent_channels,
            "layers_per_block": self.vae_num_res_blocks,
            "scaling_factor": self.scale_factor,
            "norm_num_groups": self.norm_num_groups,
        }


@dataclass(frozen=True)
class Conversion:
    """What was written, and whether the UNet came from the EMA copy (the weights the reference samples with)."""

    out_dir: Path
    ema: bool


def convert_zero123_checkpoint(
    ckpt_path: Path,
    out_dir: Path,
    clip_folder: Path | None,
    architecture: LdmArchitecture = LdmArchitecture(),
) -> Conversion:
    """Write a diffusers Zero123 folder at ``out_dir`` from a Lightning ckpt and a local CLIP vision folder."""
    ckpt_path, out_dir = Path(ckpt_path), Path(out_dir)
    clip_dir = _clip_dir(clip_folder)
    ensure_new_folder(out_dir)
    image_encoder = load_component(CLIPVisionModelWithProjection, clip_dir, TRANSFORMERS_WEIGHTS, CLIP_HOW_TO_GET)
    state = _read_state_dict(ckpt_path)
    unet_state, ema = _unet_state(state, ckpt_path)
    unet = _build(UNet2DConditionModel, architecture.unet_config(),
                  convert_ldm_unet_checkpoint(unet_state, architecture.unet_config()), f"{ckpt_path.name} (UNet)")
    vae_state = {k: v for k, v in state.items() if k.startswith(VAE_PREFIX)}
    if not vae_state:
        raise CheckpointError(f"{ckpt_path} has no {VAE_PREFIX}* weights (the VAE): {CKPT_HOW_TO_GET}")
    vae = _build(AutoencoderKL, architecture.vae_config(), convert_ldm_vae_checkpoint(vae_state, architecture.vae_config()),
                 f"{ckpt_path.name} (VAE)")
    weight, bias = (state.get(key) for key in PROJECTION_KEYS)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise CheckpointError(f"{ckpt_path} has no {' / '.join(PROJECTION_KEYS)} (the camera projection): {CKPT_HOW_TO_GET}")
    generator = Zero123Generator(unet, vae, image_encoder, CameraProjection.from_tensors(weight, bias))
    generator.save_folder(out_dir)
    return Conversion(out_dir, ema)


def _clip_dir(clip_folder: Path | None) -> Path:
    """The CLIP vision folder itself, or the image_encoder/ of a diffusers folder given instead."""
    if clip_folder is None:
        raise CheckpointError(f"zero123-xl.ckpt does not hold a complete CLIP image encoder: {CLIP_HOW_TO_GET}")
    folder = Path(clip_folder)
    if (folder / "image_encoder" / "config.json").is_file():
        return folder / "image_encoder"
    if not folder.is_dir():
        raise CheckpointError(f"the CLIP folder {folder} does not exist: {CLIP_HOW_TO_GET}")
    return folder


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ckpt's ``state_dict``, loaded without running any code stored in the file."""
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: {CKPT_HOW_TO_GET}")
    raw = load_tensors_only(path, CKPT_HOW_TO_GET)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} holds no state_dict: it is not a Zero123 Lightning checkpoint")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _unet_state(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """UNet weights under their LDM names, taken from the EMA copy when the ckpt has one.

    LitEma stores each parameter as ``model_ema.`` + its name below ``model.`` with the dots removed.
    """
    keys = [k for k in state if k.startswith(UNET_PREFIX)]
    if not keys:
        raise CheckpointError(f"{path} has no {UNET_PREFIX}* weights (the UNet): it is not a Zero123 checkpoint")
    ema_keys = {k: EMA_PREFIX + k[len("model."):].replace(".", "") for k in keys}
    present = [k for k, e in ema_keys.items() if e in state]
    if not present:
        return {k: state[k] for k in keys}, False
    if len(present) != len(keys):
        missing = next(e for e in ema_keys.values() if e not in state)
        raise CheckpointError(f"{path} has an incomplete EMA copy of the UNet ({len(present)} of {len(keys)} tensors, "
                              f"no {missing}): {CKPT_HOW_TO_GET}")
    return {k: state[ema_keys[k]] for k in keys}, True


def _build(model_cls: type, config: dict, converted: dict, source: str) -> torch.nn.Module:
    """Instantiate without initialising (meta device) and load strictly: any mismatch names keys and stops."""
    with torch.device("meta"):
        model = model_cls(**config)
    expected = model.state_dict()
    state = {k: v.contiguous() for k, v in converted.items() if v is not None}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                   if k in state and state[k].shape != v.shape)
    problems = [f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} ({len(keys)})"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
    if problems:
        raise CheckpointError(f"{source} does not fit the Zero123 architecture ({'; '.join(problems)}): "
                              f"pass the LdmArchitecture sizes the checkpoint was trained with")
    model.load_state_dict(state, strict=True, assign=True)
    return model
