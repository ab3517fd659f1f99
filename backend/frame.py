"""The reconstruction frame: cameras in the reference view's OpenCV frame, scaled into [-1, 1]^3.

The 96^3 volume is axis-aligned with the reference camera (x right, y down, z forward), not with
world z-up, because the learned 3D kernels expect that. Its extent is the bounding box of the
reference and source frusta between near and far, enlarged by 1.1 (the reference's ``scale_mat``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cameras import OPENGL_TO_OPENCV

BOUNDING_BOX_FACTOR = 1.1


def frustum_corners(intrinsics: np.ndarray, c2w_cv: np.ndarray, near: float, far: float, size: tuple[int, int]) -> np.ndarray:
    """The 8 corners (8, 3) of an OpenCV camera's frustum between two depths, image corners at 0 and W/H."""
    h, w = size
    us = np.array([0, 0, w, w] * 2, dtype=np.float64)
    vs = np.array([0, h, 0, h] * 2, dtype=np.float64)
    depth = np.array([near] * 4 + [far] * 4)
    cam = np.stack([(us - intrinsics[0, 2]) * depth / intrinsics[0, 0], (vs - intrinsics[1, 2]) * depth / intrinsics[1, 1], depth], 1)
    return cam @ c2w_cv[:3, :3].T + c2w_cv[:3, 3]


@dataclass(frozen=True)
class ReconstructionFrame:
    """Maps between world z-up coordinates and the normalised volume of one reference view."""

    intrinsics: np.ndarray  # (3, 3), pixels
    reference_c2w: np.ndarray  # (4, 4) OpenCV camera-to-world of the reference view ("trans_mat")
    centre: np.ndarray  # (3,) bounding-box centre in the reference camera frame
    radius: float  # half the longest bounding-box side, times 1.1

    @classmethod
    def from_cameras(
        cls,
        reference_c2w_gl: np.ndarray,
        source_c2ws_gl: np.ndarray,
        intrinsics: np.ndarray,
        near_far: tuple[float, float],
        image_size: tuple[int, int],
    ) -> "ReconstructionFrame":
        """Build the frame from OpenGL world poses, as the reference loader does."""
        reference_c2w = reference_c2w_gl @ OPENGL_TO_OPENCV
        world_to_ref = np.linalg.inv(reference_c2w)
        corners = [frustum_corners(intrinsics, np.eye(4), *near_far, image_size)]
        for c2w_gl in source_c2ws_gl:
            corners.append(frustum_corners(intrinsics, world_to_ref @ c2w_gl @ OPENGL_TO_OPENCV, *near_far, image_size))
        pts = np.concatenate(corners)
        low, high = pts.min(0), pts.max(0)
        radius = float((high - low).max() / 2 * BOUNDING_BOX_FACTOR)
        return cls(np.asarray(intrinsics, dtype=np.float64), reference_c2w, (low + high) / 2, radius)

    def normalised_w2c(self, c2w_gl: np.ndarray) -> np.ndarray:
        """World-to-camera (OpenCV) of any world OpenGL camera, in normalised volume coordinates."""
        c2w_ref = np.linalg.inv(self.reference_c2w) @ np.asarray(c2w_gl) @ OPENGL_TO_OPENCV
        rotation = c2w_ref[:3, :3]
        centre = (c2w_ref[:3, 3] - self.centre) / self.radius
        w2c = np.eye(4)
        w2c[:3, :3] = rotation.T
        w2c[:3, 3] = -rotation.T @ centre
        return w2c

    def source_cameras(self, c2ws_gl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Projections (V, 3, 4) K [R | t] of normalised points to pixels, and camera centres (V, 3), normalised."""
        w2cs = np.stack([self.normalised_w2c(c2w) for c2w in c2ws_gl])
        projections = np.einsum("ij,vjk->vik", self.intrinsics, w2cs[:, :3])
        centres = np.einsum("vji,vj->vi", w2cs[:, :3, :3], -w2cs[:, :3, 3])
        return projections, centres

    def to_world(self, points: np.ndarray) -> np.ndarray:
        """Normalised volume points (N, 3) back to the z-up world frame."""
        ref = points * self.radius + self.centre
        return ref @ self.reference_c2w[:3, :3].T + self.reference_c2w[:3, 3]

    def to_normalised(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) into the normalised volume (inverse of ``to_world``)."""
        ref = (points - self.reference_c2w[:3, 3]) @ self.reference_c2w[:3, :3]
        return (ref - self.centre) / self.radius
