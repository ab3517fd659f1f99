"""Pick the torch device the user asked for, or the best one present."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BackendError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


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


def generation_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Arithmetic for the view generator: "auto" is bf16 on CUDA (fp16 on GPUs without bf16), fp32 elsewhere.

    Half precision is refused off CUDA, where it is slow or unsupported.
    """
    import torch

    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision != "fp32" and device.type != "cuda":
        raise BackendError(f"{precision} view generation needs a CUDA GPU: use --precision fp32 (or auto) on {device.type}")
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
