"""Random procedural objects with exact SDFs and colours, so training has endless data with known geometry.

An object is a (smooth) union of 1-6 analytic primitives, either one primitive, a random cluster
or a loose furniture / snowman / mug-like assembly, rescaled so its bounding box is centred at the
origin with a longest side in [0.6, 1.0] (the One-2-3-45 world, z up). Every random draw comes from
a NumPy generator seeded by the object's seed and the normalisation runs in float64, so a seed gives
the same object on any device. Distances are exact outside a hard union (ellipsoids included: their
outside distance is solved for, not approximated); smooth blends and interiors are 1-Lipschitz bounds.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Callable

import mcubes
import numpy as np
import torch
from torch import Tensor

LONGEST_SIDE = (0.6, 1.0)  # world-space range of the bounding box's longest side, drawn uniformly
MESH_MARGIN = 0.02  # world units of empty grid around the bounding box, so marching cubes closes the surface
NORMALISE_RESOLUTION = 64  # marching-cubes grid (float64) that measures the bounding box
CHUNK = 1 << 18  # points per SDF evaluation when meshing, to bound memory
ELLIPSOID_NEWTON_STEPS = 8
PATTERNS = ("plain", "stripes", "checker", "waves", "dots")
PATTERN_WEIGHTS = (0.32, 0.17, 0.17, 0.17, 0.17)


def _sqrt(x: Tensor) -> Tensor:
    """sqrt with a finite gradient at 0 (surfaces and axes are hit exactly on grids); bias below 1e-10."""
    return torch.sqrt(x.clamp_min(1e-20))


def _length(v: Tensor) -> Tensor:
    return _sqrt((v * v).sum(-1))


def _radial(p: Tensor) -> Tensor:
    """Distance from the local z axis, the symmetry axis of the round primitives."""
    return _sqrt(p[..., 0] ** 2 + p[..., 1] ** 2)


def _sphere(p: Tensor, r: float) -> Tensor:
    return _length(p) - r


def _box(p: Tensor, bx: float, by: float, bz: float) -> Tensor:
    q = p.abs() - p.new_tensor([bx, by, bz])
    return _length(q.clamp_min(0)) + q.amax(-1).clamp_max(0)


def _round_box(p: Tensor, bx: float, by: float, bz: float, r: float) -> Tensor:
    return _box(p, bx - r, by - r, bz - r) - r


def _cylinder(p: Tensor, r: float, h: float) -> Tensor:
    """Capped cylinder along z: radius r, half-height h."""
    d = torch.stack([_radial(p) - r, p[..., 2].abs() - h], -1)
    return d.amax(-1).clamp_max(0) + _length(d.clamp_min(0))


def _capsule(p: Tensor, r: float, h: float) -> Tensor:
    """Segment from z = -h to z = h, swept by a ball of radius r."""
    z = p[..., 2]
    return _length(torch.stack([p[..., 0], p[..., 1], z - z.clamp(-h, h)], -1)) - r


def _torus(p: Tensor, major: float, minor: float) -> Tensor:
    """Ring in the xy plane."""
    return _length(torch.stack([_radial(p) - major, p[..., 2]], -1)) - minor


def _cone(p: Tensor, r_bottom: float, r_top: float, h: float) -> Tensor:
    """Capped cone along z (Quilez's exact form): radius r_bottom at z = -h, r_top at z = h."""
    qx, qy = _radial(p), p[..., 2]
    k2x, k2y = r_top - r_bottom, 2 * h
    cap_radius = torch.where(qy < 0, r_bottom, r_top)
    ca_x, ca_y = qx - torch.minimum(qx, cap_radius), qy.abs() - h
    t = (((r_top - qx) * k2x + (h - qy) * k2y) / (k2x**2 + k2y**2)).clamp(0, 1)
    cb_x, cb_y = qx - r_top + k2x * t, qy - h + k2y * t
    sign = torch.where((cb_x < 0) & (ca_y < 0), -1.0, 1.0)
    return sign * _sqrt(torch.minimum(ca_x**2 + ca_y**2, cb_x**2 + cb_y**2))


def _ellipsoid(p: Tensor, a: float, b: float, c: float) -> Tensor:
    """Exact distance outside, the 1-Lipschitz bound (|p/r| - 1) min(r) inside.

    The closest surface point is x = r^2 p / (t + r^2) with t >= 0 the root of |r p / (t + r^2)| = 1.
    Newton runs on H(t) = 1 / |r p / (t + r^2)| - 1, which is concave, increasing and exactly linear
    for a sphere, so from t = 0 it climbs monotonically to the root in a few steps. The gradient of
    |p - x| with x held fixed is already the exact one (x is a minimiser), so x is found without autograd.
    """
    r = p.new_tensor([a, b, c])
    scaled = _length(p / r)
    with torch.no_grad():
        r2, rp = r * r, r * p
        t = torch.zeros_like(scaled)
        for _ in range(ELLIPSOID_NEWTON_STEPS):
            denom = t[..., None] + r2
            v2 = (rp / denom) ** 2
            s = v2.sum(-1).clamp_min(1e-20)
            h = s.rsqrt() - 1
            dh = s.pow(-1.5) * (v2 / denom).sum(-1)
            t = (t - h / dh.clamp_min(1e-30)).clamp_min(0)
        closest = r2 * p / (t[..., None] + r2)
    outside = _length(p - closest)
    return torch.where(scaled > 1, outside, (scaled - 1) * min(a, b, c))


SDFS: dict[str, Callable[..., Tensor]] = {
    "sphere": _sphere,
    "ellipsoid": _ellipsoid,
    "box": _box,
    "round_box": _round_box,
    "cylinder": _cylinder,
    "capsule": _capsule,
    "torus": _torus,
    "cone": _cone,
}


def _half_extents(kind: str, size: tuple[float, ...]) -> np.ndarray:
    """Half sizes of the primitive's local axis-aligned bounding box."""
    if kind == "sphere":
        return np.full(3, size[0])
    if kind in ("ellipsoid", "box"):
        return np.array(size)
    if kind == "round_box":
        return np.array(size[:3])
    if kind == "cylinder":
        return np.array([size[0], size[0], size[1]])
    if kind == "capsule":
        return np.array([size[0], size[0], size[1] + size[0]])
    if kind == "torus":
        return np.array([size[0] + size[1], size[0] + size[1], size[1]])
    radius = max(size[0], size[1])
    return np.array([radius, radius, size[2]])


@dataclass(frozen=True)
class Paint:
    """A base colour and a pattern in the primitive's local frame; ``accent`` is the pattern's second colour.

    stripes use the first direction and frequency, checker and dots the first frequency (phases shift
    the lattice), waves blend the two colours by a sum of three sinusoids.
    """

    pattern: str
    base: np.ndarray  # (3,)
    accent: np.ndarray  # (3,)
    directions: np.ndarray  # (3, 3) unit rows
    frequencies: np.ndarray  # (3,) cycles per raw unit
    phases: np.ndarray  # (3,) in [0, 1)

    def __call__(self, p: Tensor) -> Tensor:
        """Colours (N, 3) at local points (N, 3)."""
        base, accent = p.new_tensor(self.base), p.new_tensor(self.accent)
        if self.pattern == "plain":
            return base.expand(len(p), 3)
        freq, phases = float(self.frequencies[0]), p.new_tensor(self.phases)
        cells = p * freq + phases
        if self.pattern == "stripes":
            weight = (cells @ p.new_tensor(self.directions[0]) % 1.0 < 0.5).to(p.dtype)
        elif self.pattern == "checker":
            weight = (torch.floor(cells).sum(-1) % 2).to(p.dtype)
        elif self.pattern == "dots":
            weight = (_length(cells - cells.round()) < 0.3).to(p.dtype)
        else:
            waves = torch.sin(2 * torch.pi * ((p @ p.new_tensor(self.directions).T) * p.new_tensor(self.frequencies) + phases))
            weight = 0.5 + waves.mean(-1) * 0.5
        return torch.lerp(base, accent, weight[:, None])


@dataclass(frozen=True)
class Primitive:
    """An analytic shape with its rigid placement (local -> raw: x = rotation @ local + translation)."""

    kind: str
    size: tuple[float, ...]
    rotation: np.ndarray  # (3, 3)
    translation: np.ndarray  # (3,)
    paint: Paint

    def local(self, p: Tensor) -> Tensor:
        return (p - p.new_tensor(self.translation)) @ p.new_tensor(self.rotation)

    def sdf(self, p: Tensor) -> Tensor:
        return SDFS[self.kind](self.local(p), *self.size)

    def bounds(self) -> np.ndarray:
        """(2, 3) raw-space axis-aligned box that contains the primitive."""
        half = np.abs(self.rotation) @ _half_extents(self.kind, self.size)
        return np.stack([self.translation - half, self.translation + half])


def _smooth_min(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Quadratic polynomial smooth minimum: at most k / 4 below min(a, b), 1-Lipschitz, exact min for k = 0."""
    if k == 0:
        return torch.minimum(a, b)
    h = (k - (a - b).abs()).clamp_min(0) / k
    return torch.minimum(a, b) - h * h * k / 4


@dataclass
class ProceduralObject:
    """A seeded random object; world = (raw - center) * scale puts its bounding box at the origin."""

    seed: int
    template: str
    primitives: list[Primitive]
    blend: float  # smooth-union radius in raw units, 0 for a hard union
    center: np.ndarray  # (3,) raw-space bounding-box centre
    scale: float
    half_extent: np.ndarray  # (3,) world-space bounding-box half sizes
    device: torch.device

    def _distances(self, raw: Tensor) -> Tensor:
        """Raw-space signed distances (P, N) to each primitive."""
        return torch.stack([primitive.sdf(raw) for primitive in self.primitives])

    def _raw(self, points: Tensor) -> Tensor:
        return points / self.scale + points.new_tensor(self.center)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance (N,) at world points (N, 3), negative inside; differentiable, on the points' device."""
        distances = self._distances(self._raw(points)).unbind(0)
        union = distances[0]
        for d in distances[1:]:
            union = _smooth_min(union, d, self.blend)
        return union * self.scale

    def color(self, points: Tensor) -> Tensor:
        """RGB (N, 3) in [0, 1] at world points (N, 3): the paint of the nearest primitive."""
        raw = self._raw(points)
        nearest = self._distances(raw).argmin(0)
        rgb = points.new_zeros(len(points), 3)
        for i, primitive in enumerate(self.primitives):
            chosen = nearest == i
            rgb[chosen] = primitive.paint(primitive.local(raw[chosen]))
        return rgb

    def mesh(self, resolution: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vertices (V, 3) float32, outward-wound faces (F, 3) int64, vertex colours (V, 3) float32.

        Marching cubes over the bounding box plus a margin; ``resolution`` samples span the longest side.
        """
        bounds = np.stack([-self.half_extent - MESH_MARGIN, self.half_extent + MESH_MARGIN])
        with torch.no_grad():
            vertices, faces = _marching_cubes(self.sdf, bounds, resolution, self.device, torch.float32)
            points = torch.as_tensor(vertices, dtype=torch.float32, device=self.device)
            colors = torch.cat([self.color(chunk) for chunk in points.split(CHUNK)]) if len(points) else points
        return vertices.astype(np.float32), faces, colors.clamp(0, 1).cpu().numpy()


def _marching_cubes(
    sdf: Callable[[Tensor], Tensor], bounds: np.ndarray, resolution: int, device: torch.device, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Zero level set on an isotropic grid over ``bounds`` (2, 3): vertices (V, 3) float64, faces (F, 3) int64.

    PyMCubes winds triangles outward around the region where the field is positive, so it meshes -sdf.
    """
    spacing = float((bounds[1] - bounds[0]).max()) / (resolution - 1)
    counts = np.ceil((bounds[1] - bounds[0]) / spacing).astype(int) + 1
    axes = [torch.arange(n, dtype=dtype, device=device) * spacing + float(lo) for n, lo in zip(counts, bounds[0])]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    values = torch.cat([sdf(chunk) for chunk in grid.split(CHUNK)]).reshape(*counts.tolist())
    vertices, faces = mcubes.marching_cubes(-values.double().cpu().numpy(), 0.0)
    return vertices * spacing + bounds[0], faces.astype(np.int64)


# Random generation: sizes are in raw units, assemblies roughly one unit across.


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation from a normalised Gaussian quaternion."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _axis_rotation(axis: int, angle: float) -> np.ndarray:
    """Right-handed rotation by ``angle`` about coordinate axis 0, 1 or 2."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = (axis + 1) % 3, (axis + 2) % 3
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


def _random_color(rng: np.random.Generator) -> np.ndarray:
    """Mostly saturated hues, with whites, blacks and greys now and then."""
    u = rng.random()
    if u < 0.08:
        hsv = (rng.random(), rng.uniform(0, 0.08), rng.uniform(0.85, 1.0))
    elif u < 0.16:
        hsv = (rng.random(), rng.uniform(0, 0.3), rng.uniform(0.02, 0.15))
    elif u < 0.24:
        hsv = (0.0, 0.0, rng.uniform(0.3, 0.7))
    else:
        hsv = (rng.random(), rng.uniform(0.25, 1.0), rng.uniform(0.3, 1.0))
    return np.array(colorsys.hsv_to_rgb(*hsv))


def _random_paint(rng: np.random.Generator) -> Paint:
    base = _random_color(rng)
    accent = _random_color(rng)
    for _ in range(8):  # a pattern should be visible: redraw an accent too close to the base
        if np.abs(accent - base).sum() >= 0.45:
            break
        accent = _random_color(rng)
    directions = rng.normal(size=(3, 3))
    return Paint(
        pattern=str(rng.choice(PATTERNS, p=PATTERN_WEIGHTS)),
        base=base,
        accent=accent,
        directions=directions / np.linalg.norm(directions, axis=1, keepdims=True),
        frequencies=rng.uniform(2.0, 8.0, size=3),
        phases=rng.random(3),
    )


def _random_size(rng: np.random.Generator, kind: str, scale: float) -> tuple[float, ...]:
    """Sizes for a primitive at most ``scale`` across and no thinner than a tenth of that (cones may end in a tip)."""
    s = scale / 2
    if kind == "sphere":
        return (s * rng.uniform(0.7, 1.0),)
    if kind in ("ellipsoid", "box"):
        return tuple(s * rng.uniform(0.2, 1.0, size=3))
    if kind == "round_box":
        half = s * rng.uniform(0.25, 1.0, size=3)
        return (*half, float(half.min() * rng.uniform(0.1, 0.7)))
    if kind in ("cylinder", "capsule"):
        return (s * rng.uniform(0.2, 0.7), s * rng.uniform(0.3, 1.0))
    if kind == "torus":
        major = s * rng.uniform(0.5, 0.8)
        return (major, major * rng.uniform(0.2, 0.5))
    radii = s * rng.uniform(0.3, 1.0), s * rng.uniform(0.0, 0.6)
    return (*(radii if rng.random() < 0.7 else radii[::-1]), s * rng.uniform(0.4, 1.0))


def _part(
    rng: np.random.Generator, kind: str, size: tuple[float, ...], rotation: np.ndarray, translation: tuple[float, ...]
) -> Primitive:
    return Primitive(kind, tuple(float(x) for x in size), rotation, np.asarray(translation, float), _random_paint(rng))


def _random_kind(rng: np.random.Generator, kinds: tuple[str, ...] = tuple(SDFS)) -> str:
    return str(rng.choice(kinds))


def _single(rng: np.random.Generator) -> list[Primitive]:
    kind = _random_kind(rng)
    return [_part(rng, kind, _random_size(rng, kind, 1.0), _random_rotation(rng), (0, 0, 0))]


def _surface_anchor(rng: np.random.Generator, primitive: Primitive) -> np.ndarray:
    """A point just inside ``primitive``: the inside one of random box samples with the largest SDF."""
    bounds = primitive.bounds()
    samples = torch.as_tensor(rng.uniform(bounds[0], bounds[1], size=(256, 3)), dtype=torch.float64)
    d = primitive.sdf(samples)
    d = torch.where(d < 0, d, -torch.inf)
    return samples[d.argmax()].numpy() if torch.isfinite(d.max()) else primitive.translation


def _cluster(rng: np.random.Generator) -> list[Primitive]:
    """2-6 random primitives, each centred just inside an earlier one so the parts touch."""
    parts: list[Primitive] = []
    for _ in range(rng.integers(2, 7)):
        kind = _random_kind(rng)
        anchor = _surface_anchor(rng, parts[rng.integers(len(parts))]) if parts else np.zeros(3)
        parts.append(_part(rng, kind, _random_size(rng, kind, rng.uniform(0.4, 0.8)), _random_rotation(rng), anchor))
    return parts


def _table(rng: np.random.Generator) -> list[Primitive]:
    """A slab on one pedestal or on 3-4 legs."""
    top_kind = _random_kind(rng, ("box", "round_box", "cylinder"))
    width, depth, thickness = rng.uniform(0.35, 0.5), rng.uniform(0.2, 0.5), rng.uniform(0.03, 0.07)
    height = rng.uniform(0.25, 0.5)
    if top_kind == "cylinder":
        top_size: tuple[float, ...] = (width, thickness)
        depth = width
    else:
        top_size = (width, depth, thickness) + ((thickness * 0.8,) if top_kind == "round_box" else ())
    parts = [_part(rng, top_kind, top_size, np.eye(3), (0, 0, height))]
    leg_kind = _random_kind(rng, ("cylinder", "box", "capsule", "cone"))
    r, half = rng.uniform(0.03, 0.06), height / 2
    leg_size = {"cylinder": (r, half), "box": (r, r, half), "capsule": (r, half - r), "cone": (r * 0.6, r * 1.2, half)}[leg_kind]
    legs = int(rng.choice([1, 3, 4], p=[0.25, 0.25, 0.5]))
    if legs == 1:
        parts.append(_part(rng, leg_kind, leg_size, np.eye(3), (0, 0, half)))
        parts.append(_part(rng, "cylinder", (width * 0.5, thickness * 0.7), np.eye(3), (0, 0, 0)))
        return parts
    inset = rng.uniform(0.6, 0.85)
    if legs == 4 and top_kind != "cylinder":
        feet = [(sx * width * inset, sy * depth * inset) for sx in (-1, 1) for sy in (-1, 1)]
    else:
        angles = np.arange(legs) * 2 * np.pi / legs
        feet = [(np.cos(a) * width * inset, np.sin(a) * depth * inset) for a in angles]
    parts += [_part(rng, leg_kind, leg_size, np.eye(3), (x, y, half)) for x, y in feet]
    return parts


def _snowman(rng: np.random.Generator) -> list[Primitive]:
    """2-3 stacked balls, shrinking upwards, optionally with a cone nose and a hat on the top one."""
    parts: list[Primitive] = []
    centre, radius = 0.0, rng.uniform(0.25, 0.35)
    for i in range(rng.integers(2, 4)):
        if i:
            below, radius = radius, radius * rng.uniform(0.6, 0.8)
            centre += below * rng.uniform(0.55, 0.8) + radius
        else:
            centre = radius
        kind = _random_kind(rng, ("sphere", "sphere", "ellipsoid"))
        size = (radius,) if kind == "sphere" else (radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2), radius)
        parts.append(_part(rng, kind, size, _axis_rotation(2, rng.uniform(0, 2 * np.pi)), (0, 0, centre)))
    if rng.random() < 0.6:
        length = radius * rng.uniform(0.35, 0.6)
        nose = (radius * 0.2, 0.0, length)
        parts.append(_part(rng, "cone", nose, _axis_rotation(1, np.pi / 2), (radius * 0.8 + length, 0, centre)))
    if rng.random() < 0.6:
        hat = _random_kind(rng, ("cylinder", "cone", "round_box"))
        hat_size = {"cylinder": (radius * 0.7, radius * 0.4), "cone": (radius * 0.8, 0.0, radius * 0.6),
                    "round_box": (radius * 0.6, radius * 0.6, radius * 0.3, radius * 0.1)}[hat]
        hat_z = centre + radius * 0.85 + _half_extents(hat, hat_size)[2]
        parts.append(_part(rng, hat, hat_size, np.eye(3), (0, 0, hat_z)))
    return parts


def _mug(rng: np.random.Generator) -> list[Primitive]:
    """A cylindrical or tapered body with a ring handle and sometimes a saucer."""
    radius, half_height = rng.uniform(0.2, 0.3), rng.uniform(0.2, 0.35)
    body = _part(rng, "cylinder", (radius, half_height), np.eye(3), (0, 0, half_height))
    if rng.random() < 0.4:
        body = _part(rng, "cone", (radius * rng.uniform(0.7, 0.9), radius, half_height), np.eye(3), (0, 0, half_height))
    major = half_height * rng.uniform(0.4, 0.6)
    handle = _part(rng, "torus", (major, major * rng.uniform(0.2, 0.35)), _axis_rotation(0, np.pi / 2), (radius, 0, half_height))
    parts = [body, handle]
    if rng.random() < 0.35:
        parts.append(_part(rng, "cylinder", (radius * 1.6, 0.02), np.eye(3), (0, 0, 0)))
    return parts


def _mushroom(rng: np.random.Generator) -> list[Primitive]:
    """A lamp or mushroom: a stem under a cap, sometimes on a base."""
    stem_kind = _random_kind(rng, ("cylinder", "capsule", "cone"))
    r, h = rng.uniform(0.05, 0.12), rng.uniform(0.2, 0.35)
    stem_size = {"cylinder": (r, h), "capsule": (r, h), "cone": (r * 1.5, r, h)}[stem_kind]
    parts = [_part(rng, stem_kind, stem_size, np.eye(3), (0, 0, h))]
    cap_kind = _random_kind(rng, ("ellipsoid", "cone", "sphere", "cylinder"))
    cap_r = rng.uniform(0.25, 0.4)
    cap_size = {"ellipsoid": (cap_r, cap_r, cap_r * 0.5), "cone": (cap_r, cap_r * 0.2, cap_r * 0.5),
                "sphere": (cap_r * 0.7,), "cylinder": (cap_r * 0.8, cap_r * 0.4)}[cap_kind]
    parts.append(_part(rng, cap_kind, cap_size, np.eye(3), (0, 0, 2 * h + cap_r * 0.25)))
    if rng.random() < 0.5:
        base_kind = _random_kind(rng, ("cylinder", "box", "round_box"))
        base = {"cylinder": (cap_r * 0.8, 0.04), "box": (cap_r * 0.7, cap_r * 0.7, 0.04),
                "round_box": (cap_r * 0.7, cap_r * 0.7, 0.05, 0.03)}[base_kind]
        parts.append(_part(rng, base_kind, base, np.eye(3), (0, 0, 0)))
    return parts


def _dumbbell(rng: np.random.Generator) -> list[Primitive]:
    """A horizontal bar with a weight at each end."""
    half = rng.uniform(0.25, 0.45)
    bar_kind = _random_kind(rng, ("capsule", "cylinder", "box"))
    r = rng.uniform(0.04, 0.08)
    bar = {"capsule": (r, half), "cylinder": (r, half), "box": (r, r, half)}[bar_kind]
    lying = _axis_rotation(1, np.pi / 2)
    parts = [_part(rng, bar_kind, bar, lying, (0, 0, 0))]
    end_kind = _random_kind(rng, ("sphere", "box", "cylinder", "torus", "round_box"))
    e = rng.uniform(0.12, 0.22)
    end = {"sphere": (e,), "box": (e, e, e * 0.6), "cylinder": (e, e * 0.5), "torus": (e, e * 0.4),
           "round_box": (e, e, e * 0.5, e * 0.2)}[end_kind]
    for side in (-1, 1):
        parts.append(_part(rng, end_kind, end, lying, (side * half, 0, 0)))
    return parts


def _tower(rng: np.random.Generator) -> list[Primitive]:
    """2-5 upright primitives stacked, each resting on the one below."""
    parts: list[Primitive] = []
    z = 0.0
    for _ in range(rng.integers(2, 6)):
        kind = _random_kind(rng, ("sphere", "ellipsoid", "box", "round_box", "cylinder", "capsule", "cone"))
        size = _random_size(rng, kind, rng.uniform(0.3, 0.6))
        half_height = _half_extents(kind, size)[2]
        z += half_height
        parts.append(_part(rng, kind, size, _axis_rotation(2, rng.uniform(0, 2 * np.pi)), (0, 0, z)))
        z += half_height * rng.uniform(0.6, 0.9)
    return parts


TEMPLATES: dict[str, Callable[[np.random.Generator], list[Primitive]]] = {
    "single": _single,
    "cluster": _cluster,
    "table": _table,
    "snowman": _snowman,
    "mug": _mug,
    "mushroom": _mushroom,
    "dumbbell": _dumbbell,
    "tower": _tower,
}
TEMPLATE_WEIGHTS = (0.25, 0.25, 0.1, 0.08, 0.08, 0.08, 0.06, 0.1)


def _place(primitive: Primitive, rotation: np.ndarray, paint: Paint | None) -> Primitive:
    """The primitive turned as a whole about the raw origin, optionally repainted."""
    return Primitive(primitive.kind, primitive.size, rotation @ primitive.rotation, rotation @ primitive.translation,
                     paint or primitive.paint)


def random_object(seed: int, device: torch.device | str = "cpu") -> ProceduralObject:
    """The object for ``seed``: same parameters on any device, normalised into the One-2-3-45 world."""
    rng = np.random.default_rng(seed)
    template = str(rng.choice(list(TEMPLATES), p=TEMPLATE_WEIGHTS))
    parts = TEMPLATES[template](rng)
    # Assemblies stand upright under a random turn about z; a few are tipped over entirely.
    turn = _random_rotation(rng) if rng.random() < 0.15 else _axis_rotation(2, rng.uniform(0, 2 * np.pi))
    shared_paint = _random_paint(rng) if len(parts) > 1 and rng.random() < 0.25 else None
    parts = [_place(p, turn, shared_paint) for p in parts]
    blend = 0.0 if len(parts) == 1 or rng.random() < 0.35 else float(rng.uniform(0.02, 0.08))
    longest = float(rng.uniform(*LONGEST_SIDE))

    device = torch.device(device)
    raw = ProceduralObject(seed, template, parts, blend, np.zeros(3), 1.0, np.zeros(3), device)
    bounds = np.stack([p.bounds() for p in parts])
    box = np.stack([bounds[:, 0].min(0), bounds[:, 1].max(0)]) + np.array([[-1.0], [1.0]]) * (blend / 4 + 0.02)
    with torch.no_grad():
        vertices, _ = _marching_cubes(raw.sdf, box, NORMALISE_RESOLUTION, device, torch.float64)
    lo, hi = vertices.min(0), vertices.max(0)
    scale = longest / float((hi - lo).max())
    return ProceduralObject(seed, template, parts, blend, (lo + hi) / 2, scale, (hi - lo) / 2 * scale, device)
