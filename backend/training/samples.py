"""One training sample: an object rendered at the One-2-3-45 rig, expressed in a reference view's frame.

As in the reference's training loader, the volume frame is one of the 8 stage-1 views (drawn at
random), the 32 stage-2 renders are the sources, and the supervised target is another of the 8
stage-1 views drawn independently. The input polar angle is drawn per sample so the network
sees the range of rigs that inference produces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..cameras import IMAGE_SIZE, INTRINSICS, NEAR_FAR, OPENGL_TO_OPENCV, rig_c2ws
from ..frame import ReconstructionFrame
from ..render.rasterizer import rasterize, shade

NUM_STAGE1 = 8


@dataclass
class SceneObject:
    """A coloured triangle mesh in the z-up world (inside about [-0.5, 0.5]^3), and its exact SDF if known."""

    vertices: torch.Tensor  # (V, 3)
    faces: torch.Tensor  # (F, 3) long
    colors: torch.Tensor  # (V, 3) in [0, 1]
    sdf: Callable[[torch.Tensor], torch.Tensor] | None = None  # world points (N, 3) -> (N,)


@dataclass
class TrainingSample:
    """Tensors on one device, all geometry in the normalised volume frame."""

    images: torch.Tensor  # (32, 3, H, W) source views in [0, 1]
    projections: torch.Tensor  # (32, 3, 4)
    centres: torch.Tensor  # (32, 3)
    target_rgb: torch.Tensor  # (H, W, 3)
    target_mask: torch.Tensor  # (H, W) bool
    target_depth: torch.Tensor  # (H, W) planar depth in normalised units, 0 on background
    target_c2w: torch.Tensor  # (4, 4) OpenCV camera-to-world of the target, normalised frame
    intrinsics: torch.Tensor  # (3, 3)
    sdf_points: torch.Tensor | None = None  # (M, 3) normalised points with known SDF
    sdf_values: torch.Tensor | None = None  # (M,) SDF in normalised units
    stage1_images: torch.Tensor | None = None  # (8, 3, H, W) the rig's stage-1 renders, for generated sources
    seed: int = 0  # for the step's own random draws (rays, stratification) on the training device

    def to(self, device: torch.device) -> "TrainingSample":
        moved = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return TrainingSample(**moved)


def render_views(obj: SceneObject, c2ws_gl: np.ndarray, size: int = IMAGE_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Shaded RGB on white (N, H, W, 3) and planar depth (N, H, W), 0 on background; the rig's intrinsics scaled to ``size``."""
    device = obj.vertices.device
    intrinsics = torch.as_tensor(INTRINSICS, dtype=torch.float32, device=device)
    intrinsics[:2] *= size / IMAGE_SIZE
    rgbs, depths = [], []
    for c2w in c2ws_gl:
        w2c = torch.as_tensor(np.linalg.inv(c2w @ OPENGL_TO_OPENCV), dtype=torch.float32, device=device)
        fragments = rasterize(obj.vertices, obj.faces, w2c, intrinsics, size, size)
        rgbs.append(shade(fragments, obj.vertices, obj.faces, vertex_colors=obj.colors))
        depths.append(fragments.depth)
    return torch.stack(rgbs), torch.stack(depths)


def make_sample(
    obj: SceneObject,
    rng: np.random.Generator,
    polar_range: tuple[float, float] = (45.0, 120.0),
    sdf_points: int = 4096,
    with_stage1: bool = False,
) -> TrainingSample:
    """Render the rig for a random input polar angle and build the sample in a random stage-1 view's frame.

    ``with_stage1`` also keeps all 8 stage-1 renders, from which a view generator can make the sources.
    """
    device = obj.vertices.device
    poses = rig_c2ws(float(rng.uniform(*polar_range)))
    names = list(poses)
    stage1 = np.stack([poses[n] for n in names[:NUM_STAGE1]])
    sources = np.stack([poses[n] for n in names[NUM_STAGE1:]])
    reference, target = rng.integers(NUM_STAGE1, size=2)
    frame = ReconstructionFrame.from_cameras(stage1[reference], sources, INTRINSICS, NEAR_FAR, (IMAGE_SIZE, IMAGE_SIZE))

    rendered = np.concatenate([sources, stage1 if with_stage1 else stage1[target : target + 1]])
    rgb, depth = render_views(obj, rendered)
    if with_stage1:
        stage1_rgb = rgb[len(sources):]
        rgb, depth = torch.cat([rgb[: len(sources)], stage1_rgb[target : target + 1]]), torch.cat([depth[: len(sources)], depth[len(sources) + target :][:1]])
    projections, centres = frame.source_cameras(sources)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32, device=device)

    target_c2w = np.linalg.inv(frame.normalised_w2c(stage1[target]))
    sample = TrainingSample(
        seed=int(rng.integers(2**62)),
        images=rgb[:-1].permute(0, 3, 1, 2).contiguous(),
        projections=tensor(projections),
        centres=tensor(centres),
        target_rgb=rgb[-1],
        target_mask=depth[-1] > 0,
        target_depth=depth[-1] / frame.radius,
        target_c2w=tensor(target_c2w),
        intrinsics=tensor(INTRINSICS),
        stage1_images=stage1_rgb.permute(0, 3, 1, 2).contiguous() if with_stage1 else None,
    )
    if obj.sdf is not None and sdf_points > 0:
        half = sdf_points // 2
        uniform = torch.rand(half, 3, device=device, generator=_torch_generator(rng, device)) * 2 - 1
        picks = torch.as_tensor(rng.integers(len(obj.vertices), size=sdf_points - half), device=device)
        noise = torch.randn(sdf_points - half, 3, device=device, generator=_torch_generator(rng, device)) * 0.02
        near_world = obj.vertices[picks] + noise
        to_norm = tensor(np.linalg.inv(frame.reference_c2w))
        near = ((near_world @ to_norm[:3, :3].T + to_norm[:3, 3]) - tensor(frame.centre)) / frame.radius
        points = torch.cat([uniform, near])
        ref_c2w = tensor(frame.reference_c2w)
        world = (points * frame.radius + tensor(frame.centre)) @ ref_c2w[:3, :3].T + ref_c2w[:3, 3]
        sample.sdf_points, sample.sdf_values = points, obj.sdf(world) / frame.radius
    return sample


def _torch_generator(rng: np.random.Generator, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
