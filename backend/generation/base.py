"""The interface shared by the image pipeline and the trainer: anything that turns one image into posed views."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..progress import ProgressCallback, no_progress


@runtime_checkable
class ViewGenerator(Protocol):
    """Synthesises views of the object in ``image`` seen from relative camera poses.

    ``image`` is (3, H, W) float in [0, 1] on a white background (256 x 256 for Zero123), shared by all
    poses, or (len(poses), 3, H, W) with one conditioning view per pose (one batch per stage). ``poses`` holds
    (delta polar, delta azimuth) in degrees relative to the input camera; positive delta polar moves the
    camera down. ``steps`` is the nominal sampler step count. The result is (len(poses), 3, H, W) float in
    [0, 1]; the same ``seed`` gives the same views on the same device.
    """

    def generate(
        self,
        image: torch.Tensor,
        poses: list[tuple[float, float]],
        steps: int,
        seed: int | None = None,
        progress: ProgressCallback = no_progress,
    ) -> torch.Tensor: ...
