"""Procedural training objects: seeded, exact SDFs, closed outward meshes in the unit world, varied colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from backend.training.procedural import PATTERNS, SDFS, TEMPLATES, random_object

RESOLUTION = 48
SEEDS = range(20)
# One size per primitive kind, in its SDF's argument order.
SIZES = {
    "sphere": (0.4,),
    "ellipsoid": (0.45, 0.25, 0.1),
    "box": (0.3, 0.2, 0.1),
    "round_box": (0.3, 0.2, 0.15, 0.05),
    "cylinder": (0.2, 0.3),
    "capsule": (0.15, 0.25),
    "torus": (0.3, 0.08),
    "cone": (0.3, 0.05, 0.3),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def objects():
    """(object, trimesh) for each seed, meshed once for the whole module."""
    result = []
    for seed in SEEDS:
        obj = random_object(seed)
        vertices, faces, colors = obj.mesh(RESOLUTION)
        result.append((obj, trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False), colors))
    return result


def test_same_seed_same_mesh_different_seed_different_mesh():
    first, again, other = random_object(7).mesh(40), random_object(7).mesh(40), random_object(8).mesh(40)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert [a.dtype for a in first] == [np.float32, np.int64, np.float32]
    assert first[0].shape != other[0].shape or not np.array_equal(first[0], other[0])


@pytest.mark.parametrize("kind", sorted(SDFS))
def test_primitive_distance_is_exact_outside(kind):
    """Outside, p - d(p) grad d(p) must land on the surface with |grad d| = 1: no bound passes this."""
    assert set(SIZES) == set(SDFS)
    sdf = SDFS[kind]
    generator = torch.Generator().manual_seed(0)
    points = (torch.rand(4000, 3, generator=generator, dtype=torch.float64) * 2 - 1).requires_grad_(True)
    distance = sdf(points, *SIZES[kind])
    (grad,) = torch.autograd.grad(distance.sum(), points)
    outside = distance.detach() > 1e-3
    assert outside.sum() > 1000
    assert (grad[outside].norm(dim=-1) - 1).abs().max() < 1e-6
    projected = points.detach()[outside] - distance.detach()[outside, None] * grad[outside]
    assert sdf(projected, *SIZES[kind]).abs().max() < 1e-6


def test_sdf_sign_around_mesh(objects):
    """Vertices pushed along the (winding-derived) normal are outside, pushed against it inside."""
    for obj, mesh, _ in objects:
        vertices = torch.as_tensor(np.array(mesh.vertices), dtype=torch.float32)
        normals = torch.as_tensor(np.array(mesh.vertex_normals), dtype=torch.float32)
        assert (obj.sdf(vertices - 0.004 * normals) < 0).float().mean() > 0.97, obj.seed
        assert (obj.sdf(vertices + 0.004 * normals) > 0).float().mean() > 0.97, obj.seed


def test_sdf_gradient_is_unit_outside(objects):
    generator = torch.Generator().manual_seed(1)
    for obj, _, _ in objects:
        points = (torch.rand(3000, 3, generator=generator) * 1.4 - 0.7).requires_grad_(True)
        distance = obj.sdf(points)
        (grad,) = torch.autograd.grad(distance.sum(), points)
        norms = grad.norm(dim=-1)[distance.detach() > 0.01]
        assert 0.8 < norms.mean() < 1.2, obj.seed
        if obj.blend == 0:  # a hard union of exact distances is itself exact outside
            assert (norms - 1).abs().max() < 1e-3, obj.seed


def test_meshes_are_closed_outward_and_normalised(objects):
    assert sum(mesh.is_watertight for _, mesh, _ in objects) >= 0.9 * len(objects)
    for obj, mesh, _ in objects:
        lo, hi = mesh.bounds
        assert mesh.volume > 0, obj.seed  # outward winding
        assert np.all(np.abs(mesh.vertices) <= 0.5), obj.seed
        assert 0.59 <= (hi - lo).max() <= 1.01, obj.seed
        assert np.allclose((lo + hi) / 2, 0, atol=0.01), obj.seed


def test_colours_in_range_and_patterned_objects_vary(objects):
    for obj, _, colors in objects:
        assert colors.min() >= 0 and colors.max() <= 1
        if any(p.paint.pattern != "plain" for p in obj.primitives):
            assert colors.std(0).max() > 0.02, obj.seed


@pytest.mark.parametrize("pattern", [p for p in PATTERNS if p != "plain"])
def test_patterns_are_not_constant(pattern):
    obj = next(o for o in map(random_object, range(200)) if any(p.paint.pattern == pattern for p in o.primitives))
    primitive = next(p for p in obj.primitives if p.paint.pattern == pattern)
    rgb = primitive.paint(torch.rand(2000, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5)
    assert rgb.std(0).max() > 0.05


def test_fifty_seeds_give_varied_non_empty_meshes():
    templates, kinds = set(), set()
    for seed in range(100, 150):
        obj = random_object(seed)
        vertices, faces, colors = obj.mesh(24)
        assert len(vertices) > 0 and len(faces) > 0 and np.isfinite(vertices).all(), seed
        templates.add(obj.template)
        kinds.update(p.kind for p in obj.primitives)
    assert len(templates) >= len(TEMPLATES) - 1
    assert kinds == set(SDFS)
