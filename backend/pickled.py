"""Foreign PyTorch pickles (``.pth``, ``.ckpt``, ``.bin``) are read as tensors only, so code hidden in a download never runs."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import CheckpointError


def load_tensors_only(path: Path, advice: str) -> Any:
    """``torch.load(weights_only=True)``, memory-mapped for zip files; a file that needs anything more is refused.

    ``advice`` ends each error line: what to use instead.
    """
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's remarks on old pickle protocols are noise to users
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} was refused: it needs arbitrary unpickling, which could run code hidden in the file "
                              f"({_blocked(exc)}); {advice}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch file ({_first_line(exc)}): it is truncated or corrupt; "
                              f"{advice}") from None


def _blocked(exc: pickle.UnpicklingError) -> str:
    """The sentence of torch's long refusal that names what the file asked for (e.g. ``GLOBAL os.system``).

    Its advice to allow-list that global is left out: following it would run the code.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "unsupported" in line.lower()]
    return (named or lines or [type(exc).__name__])[0].split(". ")[0].rstrip(".")[:200]


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:160] if lines else type(exc).__name__
