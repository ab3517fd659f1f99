"""Zero123's diffusion schedule and the DDIM update, written out so the reference's step quirk is exact.

diffusers' DDIMScheduler derives the previous timestep from a fixed stride, which cannot express the
reference sampler's timestep list (One-2-3-45 runs 76 steps when asked for 75); owning the few lines of the
DDIM update keeps both schedules explicit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass(frozen=True)
class NoiseSchedule:
    """The LDM training schedule of every Zero123 release (sd-objaverse-finetune-c_concat-256.yaml).

    Fixed here rather than read from a folder's scheduler config because some converted folders carry
    wrong betas (the diffusers converter regression) and the network only works with these.
    """

    beta_start: float = 0.00085
    beta_end: float = 0.012
    train_steps: int = 1000

    def alphas_cumprod(self) -> torch.Tensor:
        """"scaled_linear" betas (a linspace of square roots, squared), cumulated in float64 like the reference."""
        betas = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, self.train_steps, dtype=torch.float64) ** 2
        return torch.cumprod(1.0 - betas, dim=0).float()


def ddim_timesteps(steps: int, reference_quirk: bool, train_steps: int = 1000) -> list[int]:
    """Timesteps to visit, noisiest first.

    Standard: ``steps`` timesteps k * (T // steps) + 1 (diffusers "leading" spacing, steps_offset 1).
    Reference quirk (LDM ``make_ddim_timesteps`` + ``ddim_sampling``): every (T // steps)-th timestep from 0,
    plus 1, with the noisiest one then dropped -- 75 gives 76 steps from t=976, 50 gives 49 from t=961.
    """
    if not 1 <= steps <= train_steps:
        raise InputError(f"the number of sampling steps must be between 1 and {train_steps}, not {steps}")
    stride = train_steps // steps
    if reference_quirk:
        timesteps = [t + 1 for t in range(0, train_steps, stride)][:-1]
        if not timesteps:
            raise InputError("the reference step schedule needs at least 2 sampling steps")
    else:
        timesteps = [k * stride + 1 for k in range(steps)]
    return timesteps[::-1]


def ddim_step(
    x: torch.Tensor,
    eps: torch.Tensor,
    alpha: torch.Tensor,
    alpha_prev: torch.Tensor,
    eta: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One DDIM update from cumulative alpha ``alpha`` to ``alpha_prev``; eta = 1 is the stochastic DDPM-like sampler."""
    sigma = eta * torch.sqrt((1 - alpha_prev) / (1 - alpha) * (1 - alpha / alpha_prev))
    pred_x0 = (x - torch.sqrt(1 - alpha) * eps) / torch.sqrt(alpha)
    direction = torch.sqrt(1 - alpha_prev - sigma**2) * eps
    x_prev = torch.sqrt(alpha_prev) * pred_x0 + direction
    if eta > 0:
        x_prev = x_prev + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x_prev
