"""Held-out procedural objects as vertex-coloured PLY meshes, for ``python -m backend evaluate --up-axis z``.

Run from the repository root: ``python -m bench.procedural_meshes OUT_DIR``. Training runs draw object
seeds at random from [0, 2^31), a few thousand per run, so these fixed seeds (90,000,000 on) are almost
surely unseen by the reconstructor and the view generator; BENCHMARKS.md's single-image table uses the
first six. CPU, seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import trimesh

from backend.training.procedural import random_object

FIRST_SEED = 90_000_000


def write_objects(out_dir: Path, count: int, first_seed: int = FIRST_SEED, resolution: int = 96) -> list[Path]:
    """``count`` objects as ``procedural_<seed>.ply`` (z-up, the rig's frame), colours as 8-bit vertex colours."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(first_seed, first_seed + count):
        vertices, faces, colors = random_object(seed, torch.device("cpu")).mesh(resolution)
        rgb = (np.clip(colors, 0, 1) * 255).astype(np.uint8)
        path = out_dir / f"procedural_{seed}.ply"
        trimesh.Trimesh(vertices, faces, vertex_colors=rgb, process=False).export(path)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--resolution", type=int, default=96, help="marching-cubes samples along the longest side")
    args = parser.parse_args()
    for path in write_objects(args.out_dir, args.count, args.first_seed, args.resolution):
        print(path)


if __name__ == "__main__":
    main()
