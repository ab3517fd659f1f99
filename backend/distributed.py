"""PyTorch's own distributed stack for ``torchrun``: one process per GPU (NCCL) or per CPU slot (gloo).

A plain ``python -m backend train`` is a world of one, so the trainer has a single code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import resolve_device


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, logs and curves."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device_name: str = "auto") -> DistributedContext:
        """Join the process group ``torchrun`` describes in the environment, or stand alone without one.

        Under torchrun each rank takes the GPU ``LOCAL_RANK`` names; ``--device cpu`` (or no GPU) uses gloo.
        """
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        device = resolve_device(device_name)
        if world_size == 1:
            return cls(0, 1, device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over the ranks (identity for a world of one)."""
        if not self.active:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return dict(zip(keys, (tensor / self.world_size).tolist()))

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any, so all ranks stop at the same step."""
        if not self.active:
            return flag
        tensor = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return bool(tensor.item())

    def gather(self, value: object) -> list[object]:
        """Every rank's ``value`` (our own plain data, between our own processes), in rank order."""
        if not self.active:
            return [value]
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()
