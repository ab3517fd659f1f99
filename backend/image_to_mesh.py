"""One image -> coloured mesh on the One-2-3-45 schedule: the frozen view generator, then reconstruction.

Order as the reference's ``run.py``, each step one UNet batch: with a given polar angle, all 8
stage-1 views, then all 32 nearby views; otherwise stage-1 views 0-3, the 4 nearby views of view 0,
the polar angle estimated from them (90° when the estimate fails), the second stage-1 ring (+30°
polar, or -30° above 75°), and the nearby views of the remaining 7 stage-1 views.
Generated views are truncated to 8 bits, as the reference saves them as PNGs and re-reads them; the
reconstruction gets exactly those pixels from memory, and the One-2-3-45 folder is written to
``views_dir`` when one is given.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .cameras import STAGE1_DELTAS, STAGE2_DELTAS, stage1_indices, stage1_name, stage2_name
from .elevation import estimate_polar
from .generation.base import ViewGenerator
from .mesh import ColoredMesh
from .preprocess import PreparedInput, prepare_input
from .progress import ProgressCallback, no_progress
from .reconstruction import DEFAULT_RESOLUTION, ReconstructionPipeline
from .views import rig_view_set, write_view_folder

FALLBACK_POLAR = 90.0
STAGE1_STEPS = 75
STAGE2_STEPS = 50
WHITE_SNAP = 253  # stage-1 pixels at or above this become pure white before conditioning stage 2


@dataclass
class ImageToMeshResult:
    mesh: ColoredMesh
    polar: float
    polar_source: str  # "given", "estimated" or "fallback"
    views: dict[str, Image.Image]  # pose.json name -> generated view (8 stage-1 + 32 stage-2)
    input_image: Image.Image  # the recentred 256x256 input


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)


def _to_images(batch: torch.Tensor) -> list[Image.Image]:
    """Generated (N, 3, H, W) in [0, 1] -> 8-bit images, truncating as the reference does."""
    arrays = (batch.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def _snap_white(image: Image.Image) -> Image.Image:
    a = np.asarray(image).copy()
    a[a >= WHITE_SNAP] = 255
    return Image.fromarray(a)


class ImageToMeshPipeline:
    """``pipeline(image)`` -> ``ImageToMeshResult``; the generator is any ``ViewGenerator`` (Zero123-XL or ours).

    ``carve`` as in ``ReconstructionPipeline``: by default off, since the views are generated.
    """

    def __init__(self, generator: ViewGenerator, reconstruction: ReconstructionPipeline, carve: bool | None = None) -> None:
        self.generator = generator
        self.reconstruction = reconstruction
        self.carve = carve

    def _stage1(self, condition: torch.Tensor, ks: list[int], steps: int, seed: int, progress: ProgressCallback) -> dict[int, Image.Image]:
        views = self.generator.generate(condition, [STAGE1_DELTAS[k] for k in ks], steps, seed, progress)
        return dict(zip(ks, _to_images(views)))

    def _stage2(self, stage1: dict[int, Image.Image], ks: list[int], steps: int, seed: int, progress: ProgressCallback) -> dict[str, Image.Image]:
        """The 4 nearby views of each stage-1 view in ``ks``, all in one batch."""
        conditions = torch.stack([_to_tensor(_snap_white(stage1[k])) for k in ks for _ in STAGE2_DELTAS])
        views = self.generator.generate(conditions, list(STAGE2_DELTAS) * len(ks), steps, seed, progress)
        names = [stage2_name(k, j) for k in ks for j in range(len(STAGE2_DELTAS))]
        return dict(zip(names, _to_images(views)))

    def __call__(
        self,
        image: str | os.PathLike | Image.Image | PreparedInput,
        polar: float | None = None,
        stage1_steps: int = STAGE1_STEPS,
        stage2_steps: int = STAGE2_STEPS,
        seed: int = 0,
        resolution: int = DEFAULT_RESOLUTION,
        views_dir: str | os.PathLike | None = None,
        progress: ProgressCallback = no_progress,
    ) -> ImageToMeshResult:
        progress("preprocess", 0, 1)
        prepared = image.image if isinstance(image, PreparedInput) else prepare_input(image)  # callers may check it first
        progress("preprocess", 1, 1)
        condition = _to_tensor(prepared)
        if polar is not None:
            source = "given"
            stage1 = self._stage1(condition, stage1_indices(polar), stage1_steps, seed, progress)
            stage2 = self._stage2(stage1, stage1_indices(polar), stage2_steps, seed + 1, progress)
        else:
            stage1 = self._stage1(condition, [0, 1, 2, 3], stage1_steps, seed, progress)
            stage2 = self._stage2(stage1, [0], stage2_steps, seed + 1, progress)
            progress("elevation", 0, 1)
            estimate = estimate_polar([np.asarray(stage2[stage2_name(0, j)]) for j in range(4)])
            polar, source = (estimate.polar, "estimated") if estimate.polar is not None else (FALLBACK_POLAR, "fallback")
            progress("elevation", 1, 1)
            stage1.update(self._stage1(condition, stage1_indices(polar)[4:], stage1_steps, seed + 2, progress))
            stage2.update(self._stage2(stage1, stage1_indices(polar)[1:], stage2_steps, seed + 3, progress))

        views = {stage1_name(k): stage1[k] for k in stage1_indices(polar)}
        views.update({name: stage2[name] for name in sorted(stage2, key=lambda n: tuple(int(x) for x in n[:-4].split("_")))})
        view_set = rig_view_set(polar, views, generated=True)
        if views_dir is None:
            mesh = self.reconstruction(view_set, resolution, progress, self.carve)
        else:
            with ThreadPoolExecutor(1) as pool:  # the folder is for people and other tools: written while the GPU reconstructs
                saved = pool.submit(write_view_folder, views_dir, polar, views, True)
                mesh = self.reconstruction(view_set, resolution, progress, self.carve)
                saved.result()
        return ImageToMeshResult(mesh, float(polar), source, views, prepared)
