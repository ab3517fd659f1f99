"""End-to-end image -> mesh time at full Zero123-XL size (random weights) with the bundled reconstructor.

Run from the repository root on a GPU: ``python -m bench.bench_image_to_mesh --dtype bf16 [--compile]``.
Times the whole ``ImageToMeshPipeline`` call (preprocessing, both Zero123 stages each in one UNet batch
with guidance batched, VAE encode/decode, reconstruction and a 256^3 coloured mesh) for the default
schedule (75/50 DDIM steps as the reference runs them) and a fast schedule, with a given polar angle
(two UNet batches) and with the automatic estimate (four). Alongside: the UNet's FLOPs per image-step
(counted by ``torch.utils.flop_counter``), the bf16 matmul peak measured in the same run, and the
fraction of that peak the UNet reaches inside the schedule. Weights are random, so only timings mean anything.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from backend.generation.convert import LdmArchitecture
from backend.generation.ddim import ddim_timesteps
from backend.image_to_mesh import STAGE1_STEPS, STAGE2_STEPS, ImageToMeshPipeline
from backend.reconstruction import ReconstructionPipeline

from .bench_zero123 import DTYPES, FULL_CLIP, TINY_ARCH, TINY_CLIP, build, timed

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "spot_views" / "stage1_8" / "0.png"
FAST_STEPS = (12, 8)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 50) -> float:
    """Dense matmul TFLOP/s in ``dtype``: the ceiling the UNet's utilisation is measured against."""
    if device.type != "cuda":
        size, repeats = 1024, 3
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def multiply() -> None:
        for _ in range(repeats):
            a @ b

    timed(multiply, device)  # warm-up
    return 2 * size**3 * repeats / timed(multiply, device) / 1e12


def unet_flops(unet: torch.nn.Module, arch: LdmArchitecture, device: torch.device, dtype: torch.dtype) -> float:
    """FLOPs of one UNet image-step (one image of one guidance branch)."""
    latent = arch.image_size // 8
    sample = torch.randn(2, 8, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 1, arch.context_dim, device=device, dtype=dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, torch.tensor([500, 500], device=device), encoder_hidden_states=context)
    return counter.get_total_flops() / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (mode reduce-overhead: CUDA graphs)")
    parser.add_argument("--tiny", action="store_true", help="tiny random sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256, help="marching-cubes grid (default 256)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    arch, clip = (TINY_ARCH, TINY_CLIP) if args.tiny else (LdmArchitecture(), FULL_CLIP)
    generator = build(arch, clip, args.device, DTYPES[args.dtype])
    device = generator.device
    flops = unet_flops(generator.unet, arch, device, DTYPES[args.dtype])
    if args.compile:
        # One static graph per batch shape (16/64 UNet rows with a given polar, 8/56 estimated): no dynamic-shape kernels.
        generator.unet = torch.compile(generator.unet, mode="reduce-overhead", dynamic=False)
    pipeline = ImageToMeshPipeline(generator, ReconstructionPipeline.from_checkpoint(None, str(device)))
    image = Image.open(EXAMPLE).convert("RGB")

    def run(polar: float | None, steps: tuple[int, int]) -> Callable[[], object]:
        return lambda: pipeline(image, polar, steps[0], steps[1], seed=0, resolution=args.resolution)

    def image_steps(steps: int, views: int) -> int:
        """UNet images in one call: one per view and guidance branch, for every sampler step."""
        return 2 * views * len(ddim_timesteps(steps, generator.sampler.reference_step_quirk))

    peak = matmul_peak(device, DTYPES[args.dtype])
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{card}, torch {torch.__version__}, {args.dtype}{' + torch.compile (CUDA graphs)' if args.compile else ''}, "
          f"{date.today()}; UNet {sum(p.numel() for p in generator.unet.parameters()) / 1e6:.1f} M params, "
          f"{flops / 1e9:.1f} GFLOP per UNet image-step; {args.dtype} matmul peak {peak:.0f} TFLOP/s; "
          f"marching cubes at {args.resolution}^3\n")
    print("| schedule | first call s | end to end s | UNet TFLOP/s (32-view stage-2 batch) | of matmul peak |")
    print("| --- | ---: | ---: | ---: | ---: |", flush=True)
    for name, polar, steps in (("default 75/50, polar given", 70.0, (STAGE1_STEPS, STAGE2_STEPS)),
                               (f"fast {FAST_STEPS[0]}/{FAST_STEPS[1]}, polar given", 70.0, FAST_STEPS),
                               ("default 75/50, polar estimated", None, (STAGE1_STEPS, STAGE2_STEPS))):
        started = time.perf_counter()
        run(polar, steps)()  # warm-up (and compilation for each new batch shape)
        warm_up = time.perf_counter() - started
        best = min(timed(run(polar, steps), device) for _ in range(args.repeats))
        unet_seconds = min(timed(lambda: generator.generate(torch.rand(3, arch.image_size, arch.image_size), [(0.0, 0.0)] * 32,
                                                            steps[1], seed=0), device) for _ in range(args.repeats))
        tflops = flops * image_steps(steps[1], 32) / unet_seconds / 1e12
        print(f"| {name} | {warm_up:.2f} | {best:.2f} | {tflops:.0f} | {tflops / peak:.0%} |", flush=True)
    if device.type == "cuda":
        print(f"\npeak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
