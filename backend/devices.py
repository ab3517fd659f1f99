"""Pick the torch device the user asked for, or the best one present."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BackendError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" prefers CUDA, then Apple MPS, then the CPU; an unavailable explicit choice is an error.

    torch is imported here, not at module level, so the command line answers --help and bad input at once.
    """
    import torch

    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name.startswith("cuda") and not cuda:
        raise BackendError("CUDA was requested but this PyTorch build sees no CUDA GPU: use --device cpu or a CUDA build of torch")
    if name == "mps" and not mps:
        raise BackendError("MPS was requested but is not available (Apple silicon with macOS 12.3+ only): use --device cpu")
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise BackendError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)
