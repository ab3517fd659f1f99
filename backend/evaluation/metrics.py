"""Metrics that compare a reconstruction with ground truth, and the visual-hull baseline it must beat.

Conventions (docs/reference/peers_and_evaluation.md §2; SyncDreamer's ``eval_mesh.py`` where it has one):

- Frame: the caller passes both meshes in the same frame. ``normalise_pair`` translates both by the
  GT bounding-box centre and divides both by the GT's longest bounding-box side, so the GT lies in
  [-0.5, 0.5]^3 and every length below is a fraction of that side. Nothing is rotated, aligned or ICP'd.
- Points: uniform area-weighted surface samples (TripoSR-style), not SyncDreamer's visible-surface
  depth points, so interior and hidden faces count.
- Chamfer distance: Euclidean (L2 norm), **not squared**, and the **mean** of the two directional means
  (SyncDreamer's halved sum): CD = ½·[mean_p d(p, G) + mean_g d(g, P)]. It is half of the
  "sum of both directions" convention and not comparable with squared (pytorch3d) numbers.
- F-score at τ: precision = fraction of p with d(p, G) < τ, recall = fraction of g with d(g, P) < τ
  (strictly below τ), F = 2PR / (P + R), reported as a fraction (0 when P + R = 0).
- Volume IoU: occupancy at the voxel centres of a ``resolution``^3 grid over the union of both
  bounding boxes (padded by 1 % of its longest side). SyncDreamer uses mesh2sdf on a fixed [-1, 1]^3
  grid instead, so its objects span only ~32 voxels; numbers are close but not identical.
- Images: PSNR = 10·log10(1 / MSE) over all pixels and channels of [0, 1] images (inf when identical).
  SSIM is torchmetrics' default (Gaussian 11×11 window, σ = 1.5, K1 = 0.01, K2 = 0.03, only windows
  fully inside the image) with the data range fixed to 1, averaged over pixels and channels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from scipy.ndimage import correlate1d
from scipy.spatial import cKDTree

Mesh = tuple[np.ndarray, np.ndarray]
"""Vertices (V, 3) float and faces (F, 3) int."""

# (triangle, ray) candidates handled at once by the grid ray casting (a few hundred MB at most).
_PAIR_BUDGET = 1 << 20
# (point, triangle) pairs per winding-number chunk: small enough for the temporaries to stay in cache.
_WINDING_BUDGET = 1 << 16
# Generic sub-voxel offsets of the axis rays, as fractions of the mesh size, so that rays never pass
# exactly through a mesh edge or vertex on grid-aligned meshes (which would count a crossing twice or never).
_RAY_JITTER = (np.sqrt(2.0) - 1.0, np.sqrt(3.0) - 1.0, np.pi - 3.0)
_JITTER_SCALE = 1e-7


def normalise_pair(pred_vertices: np.ndarray, gt_vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Put both meshes in GT units: subtract the GT bbox centre, divide by the GT bbox's longest side.

    The same similarity is applied to both, so any misalignment of the prediction is kept and measured.
    Returns (pred, gt, scale) with ``scale`` the GT's longest side in the input units.
    """
    gt = np.asarray(gt_vertices, np.float64)
    lo, hi = gt.min(axis=0), gt.max(axis=0)
    centre, scale = (lo + hi) / 2.0, float((hi - lo).max())
    if scale <= 0.0:
        raise ValueError("the ground-truth mesh has an empty bounding box")
    return (np.asarray(pred_vertices, np.float64) - centre) / scale, (gt - centre) / scale, scale


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """``count`` points (count, 3) uniform over the surface area; the same seed gives the same points."""
    triangles = np.asarray(vertices, np.float64)[np.asarray(faces)]
    edge1, edge2 = triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]
    areas = 0.5 * np.linalg.norm(np.cross(edge1, edge2), axis=1)
    if not areas.sum() > 0.0:
        raise ValueError("the mesh has no surface area to sample")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(triangles), size=count, p=areas / areas.sum())
    # Square root of one uniform makes the barycentric coordinates uniform over the triangle.
    r1, r2 = np.sqrt(rng.random(count))[:, None], rng.random(count)[:, None]
    return triangles[chosen, 0] + r1 * (1.0 - r2) * edge1[chosen] + r1 * r2 * edge2[chosen]


def chamfer_and_fscore(
    pred_points: np.ndarray, gt_points: np.ndarray, thresholds: Sequence[float] = (0.05, 0.1)
) -> dict[str, float]:
    """Chamfer distance and F-scores between point sets in the same (normalised) frame.

    Keys: ``chamfer`` (mean of the two directions, unsquared L2), ``pred_to_gt`` (accuracy) and
    ``gt_to_pred`` (completeness) directional means, and per threshold τ ``precision@τ``,
    ``recall@τ``, ``fscore@τ`` with τ formatted by ``{:g}`` (e.g. ``fscore@0.05``).
    """
    pred, gt = np.asarray(pred_points, np.float64), np.asarray(gt_points, np.float64)
    pred_to_gt = cKDTree(gt).query(pred)[0]
    gt_to_pred = cKDTree(pred).query(gt)[0]
    result = {
        "chamfer": 0.5 * float(pred_to_gt.mean() + gt_to_pred.mean()),
        "pred_to_gt": float(pred_to_gt.mean()),
        "gt_to_pred": float(gt_to_pred.mean()),
    }
    for tau in thresholds:
        precision, recall = float((pred_to_gt < tau).mean()), float((gt_to_pred < tau).mean())
        total = precision + recall
        result[f"precision@{tau:g}"] = precision
        result[f"recall@{tau:g}"] = recall
        result[f"fscore@{tau:g}"] = 2.0 * precision * recall / total if total > 0.0 else 0.0
    return result


def winding_numbers(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalised winding number (N,) of each point: ~1 inside, ~0 outside, fractional near holes.

    Exact sum of signed triangle solid angles (van Oosterom and Strackee) over all faces, so it is
    O(points × faces), about 5 M pairs a second: use it for thousands of points, not whole grids. The
    sign follows the face orientation (positive inside a mesh whose normals point outwards).
    """
    triangles = np.asarray(vertices, np.float64)[np.asarray(faces)]
    corners = [np.ascontiguousarray(triangles[:, k].T) for k in range(3)]  # three (3, F)
    points = np.asarray(points, np.float64)
    result = np.zeros(len(points))
    step = max(1, _WINDING_BUDGET // max(len(triangles), 1))
    for start in range(0, len(points), step):
        query = points[start : start + step, :, None]
        # Per-component (points, faces) arrays: several times faster than stacked (..., 3) vectors.
        (ax, ay, az), (bx, by, bz), (cx, cy, cz) = ([c[k] - query[:, k] for k in range(3)] for c in corners)
        la = np.sqrt(ax * ax + ay * ay + az * az)
        lb = np.sqrt(bx * bx + by * by + bz * bz)
        lc = np.sqrt(cx * cx + cy * cy + cz * cz)
        det = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        den = la * lb * lc + (ax * bx + ay * by + az * bz) * lc + (bx * cx + by * cy + bz * cz) * la
        den += (cx * ax + cy * ay + cz * az) * lb
        result[start : start + step] = np.arctan2(det, den).sum(axis=1) / (2.0 * np.pi)
    return result


def _budget_slices(counts: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices of ``counts`` whose sums stay under ``budget`` (a single item may exceed it)."""
    ends = np.cumsum(counts)
    start = 0
    while start < len(counts):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + budget, side="right")))
        yield slice(start, stop)
        start = stop


def _ray_winding_votes(triangles: np.ndarray, axes: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """Per grid point, how many of its two rays along ``axis`` (towards - and +) have a nonzero winding number.

    A ray's winding number is the signed count of the surface crossings on it, the sign being the side
    of the crossed face (which global sign is irrelevant: only zero or not matters). Every triangle is
    intersected with the grid's ray lines inside its projection, the signed crossings are histogrammed
    by how many grid points lie below them, and a cumulative sum gives the crossings below and above
    every point. Returns (Nx, Ny, Nz) counts in {0, 1, 2}.
    """
    a_axis, b_axis = (k for k in range(3) if k != axis)
    jitter = _JITTER_SCALE * float(np.ptp(triangles.reshape(-1, 3), axis=0).max())
    rays_a = np.asarray(axes[a_axis], np.float64) + jitter * _RAY_JITTER[axis]
    rays_b = np.asarray(axes[b_axis], np.float64) + jitter * _RAY_JITTER[(axis + 1) % 3]
    heights = np.asarray(axes[axis], np.float64)
    na, nb, nc = len(rays_a), len(rays_b), len(heights)

    pa, pb, pc = triangles[..., a_axis], triangles[..., b_axis], triangles[..., axis]
    i0, i1 = np.searchsorted(rays_a, pa.min(1), "left"), np.searchsorted(rays_a, pa.max(1), "right")
    j0, j1 = np.searchsorted(rays_b, pb.min(1), "left"), np.searchsorted(rays_b, pb.max(1), "right")
    nj = np.maximum(j1 - j0, 0)
    counts = np.maximum(i1 - i0, 0) * nj

    histogram = np.zeros(na * nb * (nc + 1), np.int64)
    for part in _budget_slices(counts, _PAIR_BUDGET):
        owner = np.repeat(np.arange(part.start, part.stop), counts[part])
        if owner.size == 0:
            continue
        offset = np.arange(owner.size) - np.repeat(np.cumsum(counts[part]) - counts[part], counts[part])
        i = i0[owner] + offset // nj[owner]
        j = j0[owner] + offset % nj[owner]
        qa, qb = rays_a[i], rays_b[j]
        ea1, eb1 = pa[owner, 1] - pa[owner, 0], pb[owner, 1] - pb[owner, 0]
        ea2, eb2 = pa[owner, 2] - pa[owner, 0], pb[owner, 2] - pb[owner, 0]
        da, db = qa - pa[owner, 0], qb - pb[owner, 0]
        area = ea1 * eb2 - eb1 * ea2
        with np.errstate(divide="ignore", invalid="ignore"):
            w1 = (da * eb2 - db * ea2) / area
            w2 = (ea1 * db - eb1 * da) / area
            w0 = 1.0 - w1 - w2
        hit = (area != 0.0) & (w0 >= 0.0) & (w1 >= 0.0) & (w2 >= 0.0)
        owner, i, j, w0, w1, w2 = owner[hit], i[hit], j[hit], w0[hit], w1[hit], w2[hit]
        crossing = w0 * pc[owner, 0] + w1 * pc[owner, 1] + w2 * pc[owner, 2]
        below_count = np.searchsorted(heights, crossing, "left")  # grid points strictly below the crossing
        flat = (i * nb + j) * (nc + 1) + below_count
        histogram += np.bincount(flat, weights=np.sign(area[hit]), minlength=histogram.size).astype(np.int64)

    histogram = histogram.reshape(na, nb, nc + 1)
    below = np.cumsum(histogram, axis=-1)[..., :nc]
    above = histogram.sum(axis=-1, keepdims=True) - below
    return np.moveaxis((below != 0).astype(np.int64) + (above != 0), 2, axis)


def occupancy_grid(vertices: np.ndarray, faces: np.ndarray, axes: Sequence[np.ndarray]) -> np.ndarray:
    """Inside/outside (Nx, Ny, Nz) bool at the grid points ``axes`` (three increasing 1-D coordinate arrays).

    Inside means a nonzero winding number, so overlapping parts (a spout pushed into a body, winding 2)
    count as inside, where ray parity would call them outside. Each point casts six axis-aligned rays and
    votes inside for each whose signed crossing count is nonzero; on a closed mesh that count is the
    winding number, so all six agree. A hole only changes the rays that pass through it, so the majority
    decides, and 3-3 ties are settled by the generalised winding number (|w| > 0.5). Needs consistently
    oriented faces (either way round); ``trimesh.repair.fix_normals`` repairs meshes that are not.
    """
    triangles = np.asarray(vertices, np.float64)[np.asarray(faces)]
    shape = tuple(len(axis) for axis in axes)
    if len(triangles) == 0:
        return np.zeros(shape, bool)
    votes = sum(_ray_winding_votes(triangles, axes, axis) for axis in range(3))
    inside = votes > 3
    tied = np.argwhere(votes == 3)
    if len(tied):
        points = np.stack([np.asarray(axes[k], np.float64)[tied[:, k]] for k in range(3)], axis=1)
        inside[tuple(tied.T)] = np.abs(winding_numbers(vertices, faces, points)) > 0.5
    return inside


def volume_iou(pred_mesh: Mesh, gt_mesh: Mesh, resolution: int = 64) -> float:
    """Occupancy IoU |pred ∧ gt| / |pred ∨ gt| at the voxel centres of a ``resolution``^3 grid.

    The grid spans the union of both meshes' bounding boxes, padded by 1 % of its longest side on every
    side (so flat meshes still get a box); voxels follow the box's aspect ratio. 0 when neither mesh
    encloses a voxel centre.
    """
    stacked = np.concatenate([np.asarray(mesh[0], np.float64).reshape(-1, 3) for mesh in (pred_mesh, gt_mesh)])
    if len(stacked) == 0:
        raise ValueError("both meshes are empty")
    lo, hi = stacked.min(axis=0), stacked.max(axis=0)
    pad = 0.01 * float((hi - lo).max()) or 1e-3
    lo, hi = lo - pad, hi + pad
    centres = (np.arange(resolution) + 0.5) / resolution
    axes = [lo[k] + centres * (hi[k] - lo[k]) for k in range(3)]
    pred = occupancy_grid(pred_mesh[0], pred_mesh[1], axes)
    gt = occupancy_grid(gt_mesh[0], gt_mesh[1], axes)
    union = int(np.count_nonzero(pred | gt))
    return int(np.count_nonzero(pred & gt)) / union if union else 0.0


def visual_hull(masks: np.ndarray, projections: np.ndarray, resolution: int, bounds: np.ndarray) -> Mesh:
    """Silhouette-carved surface (vertices, faces) from foreground masks: the baseline a reconstruction must beat.

    ``masks`` (V, H, W) bool, ``projections`` (V, 3, 4) world -> homogeneous pixel (u = x/w is the column,
    v = y/w the row), with the project's pixel convention: pixel (r, c) is centred on (u, v) = (c, r), so a
    point lands in pixel (round(v), round(u)). ``bounds`` (2, 3) is the (min, max) corner of the grid of
    ``resolution``^3 points, both corners included.

    Rule: a grid point is kept iff at least one view sees it (in front of the camera, inside the image)
    and every view that sees it has it inside the mask. A view in which the point falls outside the image
    or behind the camera says nothing about it (it cannot carve what it does not see). The surface is
    the 0.5 level set of the kept/carved grid (PyMCubes, zero-padded so it is closed), so it may sit up to
    half a grid step inside the true hull; faces are oriented with normals pointing outwards.
    """
    import mcubes

    masks = np.asarray(masks, bool)
    projections = np.asarray(projections, np.float64)
    lo, hi = np.asarray(bounds, np.float64)
    _, height, width = masks.shape
    axes = [np.linspace(lo[k], hi[k], resolution) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    alive = np.arange(len(points))  # not carved yet: only these are projected into later views
    seen = np.zeros(len(points), bool)
    for mask, projection in zip(masks, projections):
        uvw = points[alive] @ projection[:, :3].T + projection[:, 3]
        depth = uvw[:, 2]
        front = depth > 0.0
        safe_depth = np.where(front, depth, 1.0)
        col = np.floor(uvw[:, 0] / safe_depth + 0.5)
        row = np.floor(uvw[:, 1] / safe_depth + 0.5)
        visible = np.flatnonzero(front & (col >= 0) & (col < width) & (row >= 0) & (row < height))
        seen[alive[visible]] = True
        outside = np.zeros(len(alive), bool)
        outside[visible] = ~mask[row[visible].astype(np.int64), col[visible].astype(np.int64)]
        alive = alive[~outside]
    kept = np.zeros(len(points), bool)
    kept[alive] = seen[alive]
    kept = kept.reshape(resolution, resolution, resolution)
    vertices, faces = mcubes.marching_cubes(np.pad(kept, 1).astype(np.float64), 0.5)
    vertices = lo + (vertices - 1.0) * (hi - lo) / (resolution - 1)
    return vertices, faces.astype(np.int64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """10·log10(1 / MSE) in dB for images in [0, 1]; inf for identical images (no cap)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian; SSIM's 2-D window is its outer product, applied separably."""
    offsets = np.arange(size) - (size - 1) / 2.0
    window = np.exp(-0.5 * (offsets / sigma) ** 2)
    return window / window.sum()


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two (H, W) or (H, W, C) images in [0, 1], averaged over valid windows and channels.

    Gaussian 11×11 window with σ = 1.5, C1 = (0.01)^2, C2 = (0.03)^2 (data range 1), statistics over
    windows lying fully inside the image: the same value as torchmetrics' default, which reflect-pads
    and then crops that border (torchmetrics infers the data range from the images; here it is 1).
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    window = _gaussian_window()
    half = len(window) // 2
    if x.shape != y.shape or min(x.shape[:2]) < len(window):
        raise ValueError(f"SSIM needs two same-shape images of at least {len(window)} pixels a side")

    def blur(image: np.ndarray) -> np.ndarray:
        smoothed = correlate1d(correlate1d(image, window, axis=0), window, axis=1)
        return smoothed[half:-half, half:-half]

    c1, c2 = 0.01**2, 0.03**2
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    index = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(index.mean())
