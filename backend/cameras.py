"""One-2-3-45 camera rig: world frame, view schedule and look-at poses.

World frame (the reference's ``calc_pose``): z up, object at the origin, cameras on a
sphere of radius 1.2. Azimuth 0 lies on -y and 90 degrees on +x; polar is measured from
+z (90 = horizon). Poses are written as OpenGL/Blender camera-to-world matrices
(columns right, up, backward) and converted to OpenCV (x right, y down, z forward) only
where the reconstruction needs it.
"""

from __future__ import annotations

import numpy as np

RADIUS = 1.2
IMAGE_SIZE = 256
FOCAL = 280.0
INTRINSICS = np.array([[FOCAL, 0.0, IMAGE_SIZE / 2], [0.0, FOCAL, IMAGE_SIZE / 2], [0.0, 0.0, 1.0]])
NEAR_FAR = (0.5, 1.8)
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])

# Stage-1 relative poses (delta polar, delta azimuth) in degrees; positive polar = camera lower.
STAGE1_DELTAS: dict[int, tuple[float, float]] = {
    0: (0.0, 0.0), 1: (0.0, 90.0), 2: (0.0, 180.0), 3: (0.0, 270.0),
    4: (30.0, 30.0), 5: (30.0, 120.0), 6: (30.0, 210.0), 7: (30.0, 300.0),
    8: (-30.0, 30.0), 9: (-30.0, 120.0), 10: (-30.0, 210.0), 11: (-30.0, 300.0),
}
# Stage-2 nearby views of each stage-1 view, in the reference order j = 0..3.
STAGE2_DELTAS: tuple[tuple[float, float], ...] = ((-10.0, 0.0), (10.0, 0.0), (0.0, -10.0), (0.0, 10.0))
# The input view sits at this absolute azimuth (an arbitrary gauge of the reference).
INPUT_AZIMUTH = 30.0


def stage1_indices(polar: float) -> list[int]:
    """Stage-1 views used for an input at ``polar``: the second ring goes down unless that leaves the sphere."""
    return [0, 1, 2, 3] + ([4, 5, 6, 7] if polar <= 75 else [8, 9, 10, 11])


def stage1_name(k: int) -> str:
    return f"{k}.png"


def stage2_name(k: int, j: int) -> str:
    return f"{k}_{j}.png"


def view_angles(polar: float) -> dict[str, tuple[float, float]]:
    """Absolute (polar, azimuth) in degrees of every view, keyed by the file name used in ``pose.json``.

    Order: the 8 stage-1 views, then the 32 stage-2 views k-major, j-minor, as the reference writes them.
    """
    stage1 = {
        stage1_name(k): (polar + STAGE1_DELTAS[k][0], INPUT_AZIMUTH + STAGE1_DELTAS[k][1])
        for k in stage1_indices(polar)
    }
    angles = dict(stage1)
    for k in stage1_indices(polar):
        p, a = stage1[stage1_name(k)]
        for j, (dp, da) in enumerate(STAGE2_DELTAS):
            angles[stage2_name(k, j)] = (p + dp, a + da)
    return angles


def camera_centre(polar_deg: float, azimuth_deg: float, radius: float = RADIUS) -> np.ndarray:
    p, a = np.radians(polar_deg), np.radians(azimuth_deg)
    return radius * np.array([np.sin(a) * np.sin(p), -np.cos(a) * np.sin(p), np.cos(p)])


def look_at_c2w(polar_deg: float, azimuth_deg: float, radius: float = RADIUS) -> np.ndarray:
    """OpenGL camera-to-world looking at the origin from (polar, azimuth), world z up."""
    centre = camera_centre(polar_deg, azimuth_deg, radius)
    forward = centre / np.linalg.norm(centre)
    right = np.cross([0.0, 0.0, 1.0], forward)
    norm = np.linalg.norm(right)
    right = np.array([0.0, 1.0, 0.0]) if norm**2 < 0.01 else right / norm
    up = np.cross(forward, right)
    up /= np.linalg.norm(up)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, forward], axis=1)
    c2w[:3, 3] = centre
    return c2w


def rig_c2ws(polar: float) -> dict[str, np.ndarray]:
    """All 40 OpenGL camera-to-world matrices of the One-2-3-45 rig for an input at ``polar``."""
    return {name: look_at_c2w(p, a) for name, (p, a) in view_angles(polar).items()}


def relative_pose_vector(delta_polar_deg: float, delta_azimuth_deg: float, delta_radius: float = 0.0) -> list[float]:
    """Zero123's conditioning vector [delta polar (rad), sin delta azimuth, cos delta azimuth, delta radius]."""
    az = np.radians(delta_azimuth_deg)
    return [float(np.radians(delta_polar_deg)), float(np.sin(az)), float(np.cos(az)), float(delta_radius)]
