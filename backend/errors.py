"""Errors the user can act on: the CLI and the add-on show their message as one line."""

import sys

GPU_MEMORY = "the GPU ran out of memory: use a lower mesh resolution, or the CPU device"
SYSTEM_MEMORY = "the computer ran out of memory: use a lower mesh resolution, or close other programs"


class BackendError(Exception):
    """Base class: the message says what is wrong and what to do."""


class InputError(BackendError):
    """Bad input files (views, images, meshes)."""


class CheckpointError(BackendError):
    """A checkpoint or model folder that cannot be loaded safely or does not fit the network."""


class CancelledError(BackendError):
    """The caller asked to stop; nothing was written."""


def out_of_memory_advice(exc: BaseException) -> str | None:
    """What to do about an out-of-memory failure of the GPU or of the computer; None for any other error.

    Shared by the command line and the worker, which catch it at the job boundary: torch raises these from
    deep inside a run (``torch.OutOfMemoryError`` for CUDA, plain ``RuntimeError`` for MPS and the CPU allocator).
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return GPU_MEMORY
    text = str(exc).lower() if isinstance(exc, RuntimeError) else ""
    if "out of memory" in text:
        return GPU_MEMORY
    if isinstance(exc, MemoryError) or "can't allocate memory" in text:
        return SYSTEM_MEMORY
    return None
