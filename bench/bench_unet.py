"""The Zero123 UNet by itself at full Zero123-XL size (random weights): time per call and where it goes.

Run from the repository root on a GPU: ``python -m bench.bench_unet --dtype bf16 [--compile] [--profile]``.
Times the denoiser as the pipeline calls it at the stage-1 batch (8 views x 2 guidance branches = 16 rows) and
the stage-2 batch (64 rows), inputs ready on the device, and gives TFLOP/s against the matmul peak measured
just before (and again after) the timings. Under ``bench.compare_trees run`` it compiles alongside the other
trees' benches and times in its turns (``bench.turns``). ``--profile`` adds the CUDA kernel time of one call by kind (convolutions, GEMMs,
attention, everything else), from ``torch.profiler``, to show which kernels hold the UNet below the peak.
"""

from __future__ import annotations

import argparse
from collections import Counter
from datetime import date

import torch
from torch.profiler import ProfilerActivity, profile

from backend.generation.convert import LdmArchitecture
from backend.generation.zero123 import Zero123Generator

from .bench_image_to_mesh import matmul_peak, unet_alone_tflops, unet_flops, unet_inputs
from .bench_zero123 import DTYPES, FULL_CLIP, TINY_ARCH, TINY_CLIP, build
from .turns import timing_rounds

ROWS = (16, 64)
# Substrings of CUDA kernel names, first match wins: cuDNN convolutions, attention (cuDNN's or flash), GEMMs.
KERNEL_KINDS = (("attention", ("flash", "fmha", "sdpa")), ("convolution", ("fprop", "implicit_gemm", "convolution", "conv2d")),
                ("GEMM", ("gemm", "nvjet", "cutlass", "cublas")))


def kernel_kind(name: str) -> str:
    """The kind of a CUDA kernel by its name; "other" is Inductor's fused normalisation and elementwise work."""
    lowered = name.lower()
    if lowered.startswith("triton_"):
        return "other"  # Inductor names its kernels after the ATen ops fused in, "convolution" included
    return next((kind for kind, keys in KERNEL_KINDS if any(key in lowered for key in keys)), "other")


def kernel_time_by_kind(generator: Zero123Generator, arch: LdmArchitecture, rows: int, calls: int = 10) -> Counter[str]:
    """Microseconds of CUDA kernels per denoiser call, summed by kind."""
    sample, t, context = unet_inputs(generator, arch, rows)
    with torch.no_grad():
        generator.denoiser(sample, t, encoder_hidden_states=context)  # warm-up (and compilation of this shape)
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            for _ in range(calls):
                generator.denoiser(sample, t, encoder_hidden_states=context)
            torch.cuda.synchronize(generator.device)
    kinds: Counter[str] = Counter()
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kinds[kernel_kind(event.name)] += event.device_time_total / calls
    return kinds


def warm_up(generator: Zero123Generator, arch: LdmArchitecture) -> None:
    """One call at each batch shape, so that compiling it (and cuDNN's autotuning) is over before any timing."""
    with torch.no_grad():
        for rows in ROWS:
            sample, t, context = unet_inputs(generator, arch, rows)
            generator.denoiser(sample, t, encoder_hidden_states=context)
    if generator.device.type == "cuda":
        torch.cuda.synchronize(generator.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--compile", action="store_true", help="Zero123Generator.compile(), as image2mesh --compile builds it")
    parser.add_argument("--profile", action="store_true", help="also the CUDA kernel time per call by kind (CUDA only)")
    parser.add_argument("--tiny", action="store_true", help="tiny random sizes (a smoke run)")
    args = parser.parse_args()
    arch, clip = (TINY_ARCH, TINY_CLIP) if args.tiny else (LdmArchitecture(), FULL_CLIP)
    generator = build(arch, clip, args.device, DTYPES[args.dtype])
    device = generator.device
    flops = unet_flops(generator.unet, arch, device, DTYPES[args.dtype])
    if args.compile:
        generator.compile()
    warm_up(generator, arch)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{card}, torch {torch.__version__}, {args.dtype}{' + compile()' if args.compile else ''}, {date.today()}; "
          f"{flops / 1e9:.1f} GFLOP per UNet image-step", flush=True)
    for _ in timing_rounds():
        peak = matmul_peak(device, DTYPES[args.dtype])
        print(f"\n{args.dtype} matmul peak {peak:.0f} TFLOP/s\n")
        print("| rows | ms per call | TFLOP/s | of matmul peak |\n| ---: | ---: | ---: | ---: |")
        for rows in ROWS:
            tflops = unet_alone_tflops(generator, arch, flops, batch=rows)
            print(f"| {rows} | {flops * rows / tflops / 1e9:.2f} | {tflops:.0f} | {tflops / peak:.0%} |", flush=True)
        if args.profile and device.type == "cuda":
            for rows in ROWS:
                kinds = kernel_time_by_kind(generator, arch, rows)
                print(f"\nCUDA kernels of one {rows}-row call: {sum(kinds.values()) / 1e3:.2f} ms\n\n| kind | ms |\n| --- | ---: |")
                for kind, microseconds in kinds.most_common():
                    print(f"| {kind}, {rows} rows | {microseconds / 1e3:.2f} |")
        print(f"\n{args.dtype} matmul peak measured again afterwards: {matmul_peak(device, DTYPES[args.dtype]):.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
    main()
