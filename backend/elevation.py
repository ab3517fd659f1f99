"""Estimate the input's polar angle from the 4 nearby views of stage-1 view 0, since the rig needs it.

One-2-3-45 places every generated view relative to the input's polar angle, which a single photo does
not give. Its estimator (``elevation_estimate/``) matches the 4 stage-2 views of stage-1 view 0, whose
relative poses are known (``STAGE2_DELTAS``), and picks the candidate polar angle under which those
matches are geometrically most consistent. This module follows that design with classical features:

1. Foreground: a pixel is object unless all its channels are > 245 (white background).
2. Matches on all 6 view pairs: SIFT keypoints detected inside each image's own foreground mask, in each
   of R, G and B separately, L2 descriptor matching with Lowe's ratio test (0.75) and a mutual
   nearest-neighbour check; a match found in several channels is kept once.
3. Hypothesis for a candidate polar c: views at (c-10, 30), (c+10, 30), (c, 20), (c, 40) (polar,
   azimuth; radius 1.2; the input sits at azimuth 30), built with ``look_at_c2w`` and converted to
   OpenCV with ``OPENGL_TO_OPENCV``; intrinsics ``INTRINSICS``.
4. Score: for each start s in {0, 1, 2}, with views in cyclic order s..s+3, triangulate the matches of
   the first pair with the first two poses (dropping points behind either camera); for each of the other
   two views, take the matches whose view-s keypoint lies within 1 px of a triangulated one, reproject
   and add the mean pixel error, each match weighted by its quality 1 - ratio/0.75 and each pixel error
   capped at ``ERROR_CAP_PX``. A view left without associations adds ``MISSING_VIEW_PENALTY``.
5. Search: coarse c in {30, 40, ..., 140}, then every degree in [best-10, best+10]; return the argmin.
   Fewer than ``MIN_MATCHES`` matches over the 6 pairs, or a score that no candidate changes, gives None
   (the caller then falls back to 90 degrees, as the reference does).

Differences from the reference:
- SIFT instead of LoFTR (no LoFTR weights): matches are sparser and noisier (about 1-2 px), so the
  error cap makes the score robust to the mismatches a ratio test lets through; the reference takes a
  plain confidence-weighted mean.
- SIFT runs on R, G and B rather than on grey, because grey conversion erases the hue edges that are
  often the only texture of a colourful object (on the procedurally coloured test meshes this cut the
  worst error from over 30 to 4 degrees); OpenCV's 0.25 px keypoint offset (from its image doubling)
  is removed so that pixel centres sit at integers, the rig's pixel convention.
- Masks are looked up at each keypoint's own (x, y); the reference reads image 0's mask at y from image
  0 but x from image 1.
- A view without associations costs a fixed penalty; the reference skips it. Associations are made in
  image space, so which views have them depends on the hypothesis only through the points it puts
  behind a camera; skipping would make exactly those hypotheses cheaper and pull the argmin to them.
- The fine search includes best+10 (the reference stops at best+9), and None comes from too few
  matches in total rather than from any single pair without matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from .cameras import IMAGE_SIZE, INPUT_AZIMUTH, INTRINSICS, OPENGL_TO_OPENCV, STAGE2_DELTAS, look_at_c2w

WHITE_THRESHOLD = 245
RATIO = 0.75
ASSOCIATION_PX = 1.0
ERROR_CAP_PX = 5.0
# A view without associations scores as if every match were an outlier: the worst a view can do.
MISSING_VIEW_PENALTY = ERROR_CAP_PX
MIN_MATCHES = 20
# OpenCV's SIFT doubles the image with a half-pixel shift and reports keypoints 0.25 px right and down.
SIFT_OFFSET_PX = 0.25
COARSE_CANDIDATES = tuple(float(c) for c in range(30, 141, 10))
FINE_HALF_WIDTH = 10


@dataclass(frozen=True)
class PolarEstimate:
    """The chosen polar angle in degrees (None when undecidable), the error of every candidate, the match count."""

    polar: float | None
    score_curve: dict[float, float] = field(default_factory=dict)
    matches: int = 0


@dataclass(frozen=True)
class _Features:
    """Keypoints of one image channel, kept together so that filtering cannot misalign them."""

    points: np.ndarray  # (N, 2) float64 pixel (x, y), pixel centres at integers
    descriptors: np.ndarray  # (N, 128) float32


def foreground_mask(rgb: np.ndarray) -> np.ndarray:
    """Object pixels: anything not near-white in every channel, as the reference masks Zero123 outputs."""
    return ~np.all(rgb > WHITE_THRESHOLD, axis=-1)


def _channel_features(channel: np.ndarray, mask: np.ndarray, sift: cv2.SIFT) -> _Features:
    keypoints, descriptors = sift.detectAndCompute(np.ascontiguousarray(channel), mask.astype(np.uint8) * 255)
    if descriptors is None or not keypoints:
        return _Features(np.zeros((0, 2)), np.zeros((0, 128), np.float32))
    points = np.array([kp.pt for kp in keypoints], dtype=np.float64) - SIFT_OFFSET_PX
    # Each keypoint is checked against its own image's mask at its own (x, y); the reference mixes them up.
    x, y = np.round(points).astype(int).T
    keep = (x >= 0) & (x < mask.shape[1]) & (y >= 0) & (y < mask.shape[0])
    keep[keep] = mask[y[keep], x[keep]]
    return _Features(points[keep], descriptors[keep])


def _features(rgb: np.ndarray, sift: cv2.SIFT) -> list[_Features]:
    """SIFT of the foreground in each of R, G, B: grey conversion erases the hue edges of colourful objects."""
    mask = foreground_mask(rgb)
    return [_channel_features(rgb[..., channel], mask, sift) for channel in range(3)]


def _ratio_matches(query: np.ndarray, train: np.ndarray, matcher: cv2.BFMatcher) -> tuple[np.ndarray, np.ndarray]:
    """Best train index for every query descriptor (-1 when ambiguous) and its distance ratio."""
    best = np.full(len(query), -1)
    ratio = np.ones(len(query))
    if len(query) == 0 or len(train) < 2:
        return best, ratio
    for pair in matcher.knnMatch(query, train, k=2):
        if len(pair) == 2 and pair[0].distance < RATIO * pair[1].distance:
            best[pair[0].queryIdx] = pair[0].trainIdx
            ratio[pair[0].queryIdx] = pair[0].distance / max(pair[1].distance, 1e-12)
    return best, ratio


def _match_pair(a: _Features, b: _Features, matcher: cv2.BFMatcher) -> np.ndarray:
    """Mutual ratio-test matches as rows (x_a, y_a, x_b, y_b, weight)."""
    ab, ratio = _ratio_matches(a.descriptors, b.descriptors, matcher)
    ba, _ = _ratio_matches(b.descriptors, a.descriptors, matcher)
    ia = np.flatnonzero(ab >= 0)
    ia = ia[ba[ab[ia]] == ia]
    ib = ab[ia]
    weight = 1.0 - ratio[ia] / RATIO
    return np.column_stack([a.points[ia], b.points[ib], weight]) if len(ia) else np.zeros((0, 5))


def match_views(views: list[np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
    """Matches of every ordered pair (i, j), i != j; (j, i) is (i, j) with its endpoints swapped."""
    sift = cv2.SIFT_create()
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    features = [_features(view, sift) for view in views]
    matches: dict[tuple[int, int], np.ndarray] = {}
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            m = np.concatenate([_match_pair(a, b, matcher) for a, b in zip(features[i], features[j])])
            # Grey regions give the same match in every channel: keep one.
            m = m[np.sort(np.unique(np.round(m[:, :4], 2), axis=0, return_index=True)[1])]
            matches[i, j] = m
            matches[j, i] = m[:, [2, 3, 0, 1, 4]]
    return matches


def hypothesis_projections(polar: float) -> list[np.ndarray]:
    """3x4 OpenCV projection matrices of the 4 nearby views if the input sits at ``polar``."""
    projections = []
    for d_polar, d_azimuth in STAGE2_DELTAS:
        c2w = look_at_c2w(polar + d_polar, INPUT_AZIMUTH + d_azimuth) @ OPENGL_TO_OPENCV
        projections.append(INTRINSICS @ np.linalg.inv(c2w)[:3])
    return projections


def _project(projection: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) and depths (N,) of world points (N, 3)."""
    h = points @ projection[:, :3].T + projection[:, 3]
    depth = h[:, 2]
    return h[:, :2] / np.where(np.abs(depth) < 1e-12, 1e-12, depth)[:, None], depth


def _view_error(projected: np.ndarray, observed: np.ndarray, weight: np.ndarray) -> float:
    """Quality-weighted mean pixel error; capping each error keeps a few mismatches from deciding the argmin."""
    error = np.minimum(np.linalg.norm(projected - observed, axis=1), ERROR_CAP_PX)
    return float(np.average(error, weights=weight))


def reprojection_score(matches: dict[tuple[int, int], np.ndarray], polar: float) -> float:
    """Summed mean reprojection error (px) of the matches under the hypothesis ``polar``; lower is better."""
    projections = hypothesis_projections(polar)
    score = 0.0
    for start in range(3):
        order = [(start + k) % 4 for k in range(4)]
        first, second = order[0], order[1]
        pair = matches[first, second]
        if len(pair):
            homogeneous = cv2.triangulatePoints(
                projections[first], projections[second], pair[:, 0:2].T.copy(), pair[:, 2:4].T.copy()
            )
            with np.errstate(divide="ignore", invalid="ignore"):
                points = (homogeneous[:3] / homogeneous[3]).T
            usable = np.isfinite(points).all(axis=1)
            points = np.where(usable[:, None], points, 0.0)
            usable &= (_project(projections[first], points)[1] > 0) & (_project(projections[second], points)[1] > 0)
            anchors, points = pair[usable, 0:2], points[usable]
        else:
            anchors, points = np.zeros((0, 2)), np.zeros((0, 3))
        for other in order[2:]:
            candidates = matches[first, other]
            if len(anchors) == 0 or len(candidates) == 0:
                score += MISSING_VIEW_PENALTY
                continue
            distance = np.linalg.norm(candidates[:, None, 0:2] - anchors[None, :, :], axis=2)
            nearest = distance.argmin(axis=1)
            associated = distance[np.arange(len(candidates)), nearest] <= ASSOCIATION_PX
            if not associated.any():
                score += MISSING_VIEW_PENALTY
                continue
            projected, _ = _project(projections[other], points[nearest[associated]])
            kept = candidates[associated]
            score += _view_error(projected, kept[:, 2:4], kept[:, 4])
    return score


def estimate_polar(views: list[np.ndarray]) -> PolarEstimate:
    """Polar angle (degrees) of the input from its 4 nearby views (256x256x3 uint8 RGB on white, reference order)."""
    if len(views) != len(STAGE2_DELTAS):
        raise ValueError(f"expected {len(STAGE2_DELTAS)} nearby views, got {len(views)}")
    expected = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if any(np.shape(view) != expected or np.asarray(view).dtype != np.uint8 for view in views):
        raise ValueError(f"nearby views must be {IMAGE_SIZE}x{IMAGE_SIZE}x3 uint8 RGB, the size the intrinsics are for")
    matches = match_views(views)
    count = sum(len(m) for (i, j), m in matches.items() if i < j)
    if count < MIN_MATCHES:
        return PolarEstimate(None, {}, count)
    curve = {c: reprojection_score(matches, c) for c in COARSE_CANDIDATES}
    if max(curve.values()) - min(curve.values()) < 1e-9:
        return PolarEstimate(None, curve, count)
    best = min(curve, key=curve.__getitem__)
    fine = [float(c) for c in range(int(best) - FINE_HALF_WIDTH, int(best) + FINE_HALF_WIDTH + 1)]
    for c in fine:
        curve.setdefault(c, reprojection_score(matches, c))
    return PolarEstimate(min(fine, key=curve.__getitem__), dict(sorted(curve.items())), count)
