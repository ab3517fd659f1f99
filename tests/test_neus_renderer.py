"""The NeuS renderer on an analytic sphere: depth, opacity, colour and background come out right."""

from __future__ import annotations

import torch

from backend.models.neus_renderer import OUTSIDE_SDF, render_rays


class SphereField:
    """SDF of a sphere of radius 0.4 at the origin, painted red; the whole cube counts as active."""

    def valid(self, points: torch.Tensor) -> torch.Tensor:
        return (points.abs() < 1).all(dim=1)

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return points.norm(dim=1) - 0.4

    def sdf_and_gradient(self, points: torch.Tensor, create_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sdf(points), points / points.norm(dim=1, keepdim=True)

    def colors(self, points: torch.Tensor, target_dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = torch.tensor([1.0, 0.0, 0.0]).expand(points.shape[0], 3)
        return rgb, torch.ones(points.shape[0], dtype=torch.bool)


def test_sphere_renders_with_correct_depth_and_background() -> None:
    torch.manual_seed(0)
    centre = torch.tensor([0.0, 0.0, -0.9])
    offsets = torch.tensor([[0.0, 0.0], [0.1, -0.05], [0.6, 0.0], [0.0, -0.7]])  # two hit, two miss
    targets = torch.cat([offsets, torch.zeros(4, 1)], dim=1)
    rays_d = torch.nn.functional.normalize(targets - centre, dim=1)
    rays_o = centre.expand(4, 3)
    near, far = torch.full((4, 1), 0.05), torch.full((4, 1), 1.85)
    out = render_rays(SphereField(), rays_o, rays_d, near, far, torch.tensor(800.0), centre, perturb=False)
    # analytic distance to the sphere along each hitting ray
    b = (rays_o * rays_d).sum(1)
    c = (rays_o * rays_o).sum(1) - 0.4**2
    hit_dist = -b - torch.sqrt(b * b - c)
    torch.testing.assert_close(out.depth[:2], hit_dist[:2], atol=0.01, rtol=0)
    assert (out.opacity[:2] > 0.98).all() and (out.opacity[2:] < 0.02).all()
    torch.testing.assert_close(out.color[:2], torch.tensor([[1.0, 0, 0]] * 2), atol=0.02, rtol=0)
    torch.testing.assert_close(out.color[2:], torch.ones(2, 3), atol=0.02, rtol=0)
    assert out.sdf.shape == (4, 128) and out.gradients.shape == (4, 128, 3)
    assert out.color_valid.all()


def test_points_outside_active_volume_are_empty() -> None:
    class Empty(SphereField):
        def valid(self, points: torch.Tensor) -> torch.Tensor:
            return torch.zeros(points.shape[0], dtype=torch.bool)

    centre = torch.tensor([0.0, 0.0, -0.9])
    out = render_rays(Empty(), centre.expand(1, 3), torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.05]]),
                      torch.tensor([[1.85]]), torch.tensor(800.0), centre)
    assert out.opacity.item() == 0 and (out.sdf == OUTSIDE_SDF).all()
    torch.testing.assert_close(out.color, torch.ones(1, 3))
