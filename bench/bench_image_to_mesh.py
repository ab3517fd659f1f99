"""End-to-end image -> mesh time at full Zero123-XL size (random weights) with the bundled reconstructor.

Run from the repository root on a GPU: ``python -m bench.bench_image_to_mesh --dtype bf16 [--compile] [--compile-all]``.
Times the whole ``ImageToMeshPipeline`` call (preprocessing, both Zero123 stages each in one UNet batch
with guidance batched, VAE encode/decode, reconstruction and a 256^3 coloured mesh) for the default
schedule (75/50 DDIM steps as the reference runs them) and a fast schedule, with a given polar angle
(two UNet batches) and with the automatic estimate (four). Alongside: the UNet's FLOPs per image-step
(counted by ``torch.utils.flop_counter``), the bf16 matmul peak measured in the same run, and the
fraction of that peak the UNet reaches inside the schedule and by itself. Weights are random, so only timings
mean anything, and the random views mesh to little or nothing: the reconstruction of a real object's views
(``examples/spot_views``) is timed on its own, and so is that of the default call's random views, to give the
default call's time with a real object's mesh. ``--stages`` adds the seconds per progress stage of one call.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from backend.generation.convert import LdmArchitecture
from backend.generation.ddim import ddim_timesteps
from backend.generation.zero123 import Zero123Generator
from backend.image_to_mesh import STAGE1_STEPS, STAGE2_STEPS, ImageToMeshPipeline
from backend.reconstruction import ReconstructionPipeline
from backend.views import load_view_folder, rig_view_set

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
    return 2 * size**3 * repeats / min(timed(multiply, device) for _ in range(3)) / 1e12


def unet_flops(unet: torch.nn.Module, arch: LdmArchitecture, device: torch.device, dtype: torch.dtype) -> float:
    """FLOPs of one UNet image-step (one image of one guidance branch)."""
    latent = arch.image_size // 8
    sample = torch.randn(2, 8, latent, latent, device=device, dtype=dtype)
    context = torch.randn(2, 1, arch.context_dim, device=device, dtype=dtype)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, torch.tensor([500, 500], device=device), encoder_hidden_states=context)
    return counter.get_total_flops() / 2


def print_stages(pipeline: ImageToMeshPipeline, image: Image.Image, device: torch.device, resolution: int) -> None:
    """Seconds per progress stage of one default-schedule call (the GPU synchronised at every report, so a little slower)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    seconds: dict[str, float] = {}
    last = [0.0]

    def record(stage: str, step: int, total: int) -> None:
        sync()
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - last[0]
        last[0] = now

    sync()
    last[0] = started = time.perf_counter()
    result = pipeline(image, 70.0, STAGE1_STEPS, STAGE2_STEPS, seed=0, resolution=resolution, progress=record)
    sync()
    print(f"\nStages of one default call, polar given ({time.perf_counter() - started:.2f} s, a mesh of "
          f"{len(result.mesh.vertices)} vertices from the random views; each row runs up to its last report):\n")
    print("| stage | seconds |\n| --- | ---: |")
    for stage, value in seconds.items():
        print(f"| {stage} | {value:.3f} |")


def unet_inputs(generator: Zero123Generator, arch: LdmArchitecture, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (sample, timestep, context) for one denoiser call of ``rows`` rows, on the generator's device."""
    latent = arch.image_size // 8
    sample = torch.randn(rows, 2 * arch.latent_channels, latent, latent, device=generator.device, dtype=generator.dtype)
    context = torch.randn(rows, 1, arch.context_dim, device=generator.device, dtype=generator.dtype)
    return sample, torch.full((rows,), 500, device=generator.device, dtype=torch.long), context


def unet_alone_tflops(generator: Zero123Generator, arch: LdmArchitecture, flops: float, batch: int = 64, calls: int = 20) -> float:
    """TFLOP/s of the denoiser by itself at a batch of ``batch`` rows (64: the 32-view stage-2 batch with guidance), inputs ready."""
    sample, t, context = unet_inputs(generator, arch, batch)

    def denoise() -> None:
        with torch.no_grad():
            for _ in range(calls):
                generator.denoiser(sample, t, encoder_hidden_states=context)

    timed(denoise, generator.device)  # warm-up (and compilation of this shape)
    return flops * batch * calls / min(timed(denoise, generator.device) for _ in range(3)) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--compile", action="store_true", help="Zero123Generator.compile(): channels-last, fused attention, torch.compile with CUDA graphs")
    parser.add_argument("--compile-all", action="store_true", help="--compile, and the VAE and CLIP too (compile(everything=True))")
    parser.add_argument("--tiny", action="store_true", help="tiny random sizes (a smoke run)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256, help="marching-cubes grid (default 256)")
    parser.add_argument("--stages", action="store_true", help="also time each progress stage of one default call")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    arch, clip = (TINY_ARCH, TINY_CLIP) if args.tiny else (LdmArchitecture(), FULL_CLIP)
    generator = build(arch, clip, args.device, DTYPES[args.dtype])
    device = generator.device
    flops = unet_flops(generator.unet, arch, device, DTYPES[args.dtype])
    parameters = sum(p.numel() for p in generator.unet.parameters())  # before compile() adds fused copies
    if args.compile or args.compile_all:  # one static graph per batch shape (16/64 UNet rows with a given polar, 8/56 estimated)
        generator.compile(everything=args.compile_all)
    pipeline = ImageToMeshPipeline(generator, ReconstructionPipeline.from_checkpoint(None, str(device)))
    image = Image.open(EXAMPLE).convert("RGB")

    def run(polar: float | None, steps: tuple[int, int]) -> Callable[[], object]:
        return lambda: pipeline(image, polar, steps[0], steps[1], seed=0, resolution=args.resolution)

    def image_steps(steps: int, views: int) -> int:
        """UNet images in one call: one per view and guidance branch, for every sampler step."""
        return 2 * views * len(ddim_timesteps(steps, generator.sampler.reference_step_quirk))

    peak = matmul_peak(device, DTYPES[args.dtype])
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{card}, torch {torch.__version__}, {args.dtype}{' + compile()' if args.compile or args.compile_all else ''}{' of UNet, VAE and CLIP' if args.compile_all else ''}, "
          f"{date.today()}; UNet {parameters / 1e6:.1f} M params, "
          f"{flops / 1e9:.1f} GFLOP per UNet image-step; {args.dtype} matmul peak {peak:.0f} TFLOP/s; "
          f"marching cubes at {args.resolution}^3\n")
    print("| schedule | first call s | end to end s | UNet TFLOP/s in the 32-view stage-2 call | of matmul peak |")
    print("| --- | ---: | ---: | ---: | ---: |", flush=True)
    end_to_end: dict[str, float] = {}
    for name, polar, steps in (("default 75/50, polar given", 70.0, (STAGE1_STEPS, STAGE2_STEPS)),
                               (f"fast {FAST_STEPS[0]}/{FAST_STEPS[1]}, polar given", 70.0, FAST_STEPS),
                               ("default 75/50, polar estimated", None, (STAGE1_STEPS, STAGE2_STEPS))):
        started = time.perf_counter()
        run(polar, steps)()  # warm-up (and compilation for each new batch shape)
        warm_up = time.perf_counter() - started
        best = end_to_end[name] = min(timed(run(polar, steps), device) for _ in range(args.repeats))
        unet_seconds = min(timed(lambda: generator.generate(torch.rand(3, arch.image_size, arch.image_size), [(0.0, 0.0)] * 32,
                                                            steps[1], seed=0), device) for _ in range(args.repeats))
        tflops = flops * image_steps(steps[1], 32) / unet_seconds / 1e12
        print(f"| {name} | {warm_up:.2f} | {best:.2f} | {tflops:.0f} | {tflops / peak:.0%} |", flush=True)
    alone = unet_alone_tflops(generator, arch, flops)
    peak_after = matmul_peak(device, DTYPES[args.dtype])
    print(f"\nUNet alone at the stage-2 batch (64 rows): {alone:.0f} TFLOP/s = {alone / peak:.0%} of the matmul peak "
          f"({alone / peak_after:.0%} of {peak_after:.0f} TFLOP/s measured again afterwards)")
    # Random weights make noise views, so the reconstruction above meshes noise: time it once on a real object's views too.
    views = dataclasses.replace(load_view_folder(EXAMPLE.parents[1]), generated=True)  # not carved, as image2mesh runs it
    mesh = pipeline.reconstruction(views, args.resolution)
    seconds = min(timed(lambda: pipeline.reconstruction(views, args.resolution), device) for _ in range(args.repeats))
    print(f"\nreconstruction of examples/spot_views as image2mesh runs it: {seconds:.3f} s, {len(mesh.vertices)} vertices")
    # The same for the random views the default call made, to swap their reconstruction for the real object's.
    noise = pipeline(image, 70.0, STAGE1_STEPS, STAGE2_STEPS, seed=0, resolution=args.resolution)
    noise_views = rig_view_set(noise.polar, noise.views, generated=True)
    noise_seconds = min(timed(lambda: pipeline.reconstruction(noise_views, args.resolution), device) for _ in range(args.repeats))
    default = end_to_end["default 75/50, polar given"]
    print(f"reconstruction of the default call's random views: {noise_seconds:.3f} s, {len(noise.mesh.vertices)} vertices; "
          f"so the default call with a real object's views would take about {default - noise_seconds + seconds:.2f} s")
    if args.stages:
        print_stages(pipeline, image, device, args.resolution)
    if device.type == "cuda":
        print(f"\npeak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
