"""Speed of the Zero123 view generator at full Zero123-XL size, from random weights.

Run from the repository root: ``python -m bench.bench_zero123 --device cuda --dtype fp16``. Builds
``Zero123Generator`` from randomly initialised components of the released sizes (LdmArchitecture defaults,
CLIP ViT-L/14, a 768 + 4 -> 768 camera projection) and, after one 2-step warm-up call, times
(a) one stage-1 call (4 poses, 75 steps, i.e. 76 with the reference quirk), (b) one stage-2 call (4 poses,
50 -> 49 steps) and (c) the whole One-2-3-45 schedule (2 stage-1 + 8 stage-2 calls). Prints a Markdown
table: seconds per call, per UNet image-step (one UNet image per pose and guidance branch) and peak GPU
memory. Weights are random, so only timings mean anything. ``--tiny`` uses tiny sizes (a CPU smoke run).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from datetime import date

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from backend.cameras import STAGE1_DELTAS, STAGE2_DELTAS
from backend.generation.convert import LdmArchitecture
from backend.generation.ddim import ddim_timesteps
from backend.generation.projection import CameraProjection
from backend.generation.zero123 import Zero123Generator
from backend.image_to_mesh import STAGE1_STEPS, STAGE2_STEPS

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL_CLIP = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             patch_size=14, image_size=224, projection_dim=768)
TINY_ARCH = LdmArchitecture(image_size=64, model_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                            attention_resolutions=(1,), num_heads=8, context_dim=32, vae_channels=16,
                            vae_channel_mult=(1, 1, 2, 2), vae_num_res_blocks=1, norm_num_groups=8)
TINY_CLIP = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                             image_size=224, patch_size=32, projection_dim=16)


def build(arch: LdmArchitecture, clip: CLIPVisionConfig, device: str, dtype: torch.dtype) -> Zero123Generator:
    """A generator of these sizes with seeded random weights."""
    torch.manual_seed(0)
    return Zero123Generator(UNet2DConditionModel(**arch.unet_config()), AutoencoderKL(**arch.vae_config()),
                            CLIPVisionModelWithProjection(clip), CameraProjection(clip.projection_dim, arch.context_dim),
                            device, dtype)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, synchronising the GPU before and after."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default fp16 on CUDA, fp32 elsewhere")
    parser.add_argument("--tiny", action="store_true", help="tiny random sizes (CPU smoke run)")
    args = parser.parse_args()
    args.dtype = args.dtype or ("fp16" if torch.device(args.device).type == "cuda" else "fp32")
    arch, clip = (TINY_ARCH, TINY_CLIP) if args.tiny else (LdmArchitecture(), FULL_CLIP)
    gen = build(arch, clip, args.device, DTYPES[args.dtype])
    device = gen.device
    image = torch.rand(3, arch.image_size, arch.image_size)
    stage1 = [STAGE1_DELTAS[k] for k in range(4)]
    stage2 = list(STAGE2_DELTAS)

    def call(poses: list[tuple[float, float]], steps: int) -> Callable[[], object]:
        return lambda: gen.generate(image, poses, steps, seed=0)

    def schedule() -> None:
        for _ in range(2):
            call(stage1, STAGE1_STEPS)()
        for _ in range(8):
            call(stage2, STAGE2_STEPS)()

    def image_steps(steps: int, poses: int) -> int:
        return len(ddim_timesteps(steps, gen.sampler.reference_step_quirk)) * 2 * poses

    timed(call(stage1, 2), device)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = [
        (f"stage 1: 4 poses, {STAGE1_STEPS} steps", timed(call(stage1, STAGE1_STEPS), device), image_steps(STAGE1_STEPS, 4)),
        (f"stage 2: 4 poses, {STAGE2_STEPS} steps", timed(call(stage2, STAGE2_STEPS), device), image_steps(STAGE2_STEPS, 4)),
    ]
    rows.append(("full schedule: 2 stage-1 + 8 stage-2 calls", timed(schedule, device),
                 2 * rows[0][2] + 8 * rows[1][2]))

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else "-"
    unet_params = sum(p.numel() for p in gen.unet.parameters())
    print(f"{card}, torch {torch.__version__}, {args.dtype}, {date.today()}, "
          f"{'tiny' if args.tiny else 'Zero123-XL'} UNet {unet_params / 1e6:.1f} M params, peak GPU memory {peak}\n")
    print("| what | seconds | UNet image-steps | ms per UNet image-step |")
    print("| --- | ---: | ---: | ---: |")
    for name, seconds, count in rows:
        print(f"| {name} | {seconds:.2f} | {count} | {seconds / count * 1e3:.2f} |")


if __name__ == "__main__":
    main()
