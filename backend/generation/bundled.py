"""Where the shipped view generator lives, and which generator folder a run uses (light: no diffusers import)."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError

# Our small Zero123-architecture generator (``python -m backend train-generator``), in diffusers layout.
DEFAULT_GENERATOR = Path(__file__).resolve().parents[1] / "weights" / "view_generator"


def generator_folder(folder: str | Path | None) -> Path:
    """``folder`` when one is given, else the shipped generator; a clear error when neither exists."""
    if folder is not None:
        return Path(folder)
    if not (DEFAULT_GENERATOR / "model_index.json").is_file():
        raise CheckpointError("no view generator: pass --zero123 DIR, a Zero123 / Zero123-XL diffusers folder (or convert "
                              "zero123-xl.ckpt with `python -m backend convert-zero123`); the bundled small generator "
                              f"({DEFAULT_GENERATOR}) is not installed (`python -m backend train-generator` trains one)")
    return DEFAULT_GENERATOR
