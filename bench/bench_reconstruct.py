"""Time each reconstruction stage (features, volume, sparse CNN, SDF grid, marching cubes, colours).

Usage: python -m bench.bench_reconstruct [--views DIR] [--checkpoint PATH] [--device auto] [--resolutions 128 256]
Without --views it renders the bundled example's source mesh rig on the fly from ../shared/data.
Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from backend.devices import resolve_device
from backend.extraction import marching_cubes, sdf_grid, vertex_colors
from backend.models.batchnorm import normalisation
from backend.models.volume import aggregate_views
from backend.reconstruction import ReconstructionPipeline, camera_tensors
from backend.sparse import SparseTensor
from backend.views import load_view_folder

REPO = Path(__file__).resolve().parents[1]


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, fn, *args):
    synchronise(device)
    start = time.perf_counter()
    out = fn(*args)
    synchronise(device)
    return out, time.perf_counter() - start


@torch.no_grad()
def encode_stages(pipeline: ReconstructionPipeline, views) -> tuple[dict[str, float], object]:
    """Run the encoder step by step, timing each, and return the volume as ``encode`` would."""
    model, device = pipeline.model, pipeline.device
    times = {}
    _, images, projections, centres = camera_tensors(views, device)
    with normalisation(model, pipeline.norm_statistics):
        maps, times["features"] = timed(device, model.pyramid_feature_network.fused, images)
        net = model.sdf_network_lod0

        def volume():
            return aggregate_views(net.compress_layer(maps), projections, net.config.volume_resolution, net.config.min_visible_views)

        (coords, feats), times["volume"] = timed(device, volume)
        batch = torch.zeros_like(coords[:, :1])
        sparse = SparseTensor(feats, torch.cat([coords, batch], 1).int())
        _, times["sparse CNN"] = timed(device, net.sparse_costreg_net, sparse)
    _, volume_obj = pipeline.encode(views)
    return times, volume_obj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=Path, default=REPO / "examples" / "spot_views")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()

    device = resolve_device(args.device)
    pipeline = ReconstructionPipeline.from_checkpoint(args.checkpoint, str(device))
    views = load_view_folder(args.views)
    pipeline.encode(views)  # warm-up (allocations, kernels)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {time.strftime('%Y-%m-%d')}")
    print("| resolution | features | volume | sparse CNN | SDF grid | marching cubes | colours | total | vertices |")
    print("|---|---|---|---|---|---|---|---|---|")
    for res in args.resolutions:
        times, volume = encode_stages(pipeline, views)
        sdf, times["SDF grid"] = timed(device, sdf_grid, pipeline.model, volume, res)
        (verts, _), times["marching cubes"] = timed(device, marching_cubes, sdf)
        _, times["colours"] = timed(device, vertex_colors, pipeline.model, volume, verts)
        total = sum(times.values())
        cells = " | ".join(f"{t:.2f} s" for t in times.values())
        print(f"| {res} | {cells} | {total:.2f} s | {len(verts)} |")


if __name__ == "__main__":
    main()
