"""Accuracy of backend.elevation on the shared meshes, rendered at known polar angles.

Run from the repository root: ``python -m bench.bench_elevation``. Each mesh is drawn from the 4 nearby
views of an input at (P, 30) by ``backend.render`` (white background, 256x256) and the estimate is
compared with P; prints one row per (mesh, P) and a per-mesh summary. CPU only, under half a minute.
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date
from pathlib import Path

import cv2
import numpy as np
import torch

from backend.cameras import INPUT_AZIMUTH, STAGE2_DELTAS, look_at_c2w
from backend.elevation import estimate_polar
from backend.render.mesh_views import load_normalised_mesh, render_view

MESHES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "meshes"
# name: (file, up axis, texture)
SPECS: dict[str, tuple[str, str, str | None]] = {
    "spot": ("spot/spot_triangulated.obj", "y", "spot/spot_texture.png"),
    "cow": ("cow.obj", "y", None),
    "teapot": ("teapot.obj", "y", None),
    "suzanne": ("suzanne.obj", "y", None),
    "homer": ("homer.obj", "y", None),
    "fandisk": ("fandisk.obj", "z", None),
    "alligator": ("alligator.obj", "z", None),
}
DEFAULT_POLARS = (30, 45, 60, 75, 90, 105, 120, 135)


def nearby_views(mesh_name: str, polar: float) -> list[np.ndarray]:
    """The 4 stage-2 views (RGB uint8) of an input at (polar, INPUT_AZIMUTH), in the reference order."""
    path, up_axis, texture = SPECS[mesh_name]
    mesh = load_normalised_mesh(MESHES / path, up_axis, MESHES / texture if texture else None)
    return [
        render_view(mesh, look_at_c2w(polar + d_polar, INPUT_AZIMUTH + d_azimuth))[0][..., :3]
        for d_polar, d_azimuth in STAGE2_DELTAS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", nargs="+", default=list(SPECS), choices=list(SPECS))
    parser.add_argument("--polars", nargs="+", type=float, default=DEFAULT_POLARS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    print(f"# {date.today()} {platform.node()} {platform.processor() or platform.machine()}, cv2 {cv2.__version__}")
    print(f"{'mesh':10s} {'true':>5s} {'est':>5s} {'error':>6s} {'matches':>7s} {'s':>5s}")
    for name in args.meshes:
        errors = []
        for polar in args.polars:
            views = nearby_views(name, polar)
            start = time.perf_counter()
            result = estimate_polar(views)
            seconds = time.perf_counter() - start
            if result.polar is None:
                print(f"{name:10s} {polar:5.0f} {'None':>5s} {'-':>6s} {result.matches:7d} {seconds:5.2f}")
                continue
            errors.append(result.polar - polar)
            print(f"{name:10s} {polar:5.0f} {result.polar:5.0f} {errors[-1]:+6.0f} {result.matches:7d} {seconds:5.2f}")
        absolute = np.abs(errors) if errors else np.array([np.nan])
        print(
            f"{name:10s} mean |error| {absolute.mean():.1f}, max {absolute.max():.0f}, "
            f"None {len(args.polars) - len(errors)}/{len(args.polars)}"
        )


if __name__ == "__main__":
    main()
