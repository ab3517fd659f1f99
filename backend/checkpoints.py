"""Reconstruction checkpoints: the official One-2-3-45 ``.pth`` and the project's own folder format.

Official files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary
unpickling is refused and its code never runs. Our own format is a folder holding
``model.safetensors`` and ``config.json`` (architecture, provenance, step, metrics).
Loading is strict: every parameter must be present with the right shape; only BatchNorm's
``num_batches_tracked`` counters may be missing. A mismatch names the keys and stops, so
a module is never silently left random (the reference's loader failed that way).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .files import atomic_write
from .models import One2345Reconstructor, ReconstructorConfig
from .pickled import load_tensors_only

OFFICIAL_MODULES = ("pyramid_feature_network", "sdf_network_lod0", "rendering_network_lod0", "variance_network_lod0")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_NAME = "image-to-3d-reconstructor"
FORMAT_VERSION = 1
OPTIONAL_SUFFIX = "num_batches_tracked"
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "reconstructor"


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself (shown in the add-on's checkpoint list)."""

    name: str
    config: ReconstructorConfig
    step: int | None = None
    provenance: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    created: str | None = None


def _read_official(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    raw = load_tensors_only(path, "use the official ckpt_215000.pth or one of our safetensors checkpoints")
    if not isinstance(raw, dict) or not any(m in raw for m in OFFICIAL_MODULES):
        raise CheckpointError(f"{path.name} is not a One-2-3-45 reconstruction checkpoint: it has none of {', '.join(OFFICIAL_MODULES)}")
    state = {}
    for module in OFFICIAL_MODULES:
        sub = raw.get(module)
        if not isinstance(sub, dict):
            raise CheckpointError(f"{path.name} lacks the module {module!r}: it is not a complete One-2-3-45 lod0 checkpoint")
        for key, value in sub.items():
            if not isinstance(value, torch.Tensor):
                raise CheckpointError(f"{path.name}: entry {module}.{key} is not a tensor")
            state[f"{module}.{key}"] = value
    step = raw.get("iter_step")
    return state, int(step) if isinstance(step, (int, float)) else None


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise naming the offending keys unless ``state`` fits ``model`` exactly (counters optional)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            more = f" and {len(keys) - 5} more" if len(keys) > 5 else ""
            problems.append(f"{label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise CheckpointError(f"{source} does not fit the One-2-3-45 lod0 network ({'; '.join(problems)})")


def _load_into(model: One2345Reconstructor, state: dict[str, torch.Tensor], source: str) -> None:
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=False)


def _read_own(folder: Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CheckpointError(f"{required} is missing: a checkpoint folder holds {WEIGHTS_FILE} and {CONFIG_FILE}")
    try:
        meta = json.loads(config_path.read_text())
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"format is {meta.get('format')!r}, expected {FORMAT_NAME!r}")
        config = ReconstructorConfig.from_dict(meta["config"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{config_path} is not a valid checkpoint config ({exc})") from None
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights_path} is damaged or truncated ({exc}): re-copy or re-train it") from None
    info = CheckpointInfo(folder.name, config, meta.get("step"), meta.get("provenance", {}), meta.get("metrics", {}), meta.get("created"))
    return state, info


def load_reconstructor(path: str | os.PathLike | None = None) -> tuple[One2345Reconstructor, CheckpointInfo]:
    """Load an official ``.pth`` or one of our checkpoint folders (default: the bundled one)."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    if not path.exists():
        hint = "train one (python -m backend train) or pass --checkpoint" if path == DEFAULT_CHECKPOINT else "check the path"
        raise CheckpointError(f"checkpoint {path} not found: {hint}")
    if path.is_file() and path.suffix == ".safetensors":
        path = path.parent
    if path.is_dir():
        state, info = _read_own(path)
        source = f"{path / WEIGHTS_FILE} (network sizes from {CONFIG_FILE})"
    else:
        state, step = _read_official(path)
        info = CheckpointInfo(path.stem, ReconstructorConfig(), step, {"source": "official One-2-3-45", "file": path.name})
        source = str(path)
    model = One2345Reconstructor(info.config)
    _load_into(model, state, source)
    return model, info


def save_checkpoint(
    folder: str | os.PathLike,
    model: One2345Reconstructor,
    step: int | None = None,
    provenance: dict | None = None,
    metrics: dict | None = None,
) -> Path:
    """Write ``model.safetensors`` then ``config.json``, each atomically; other files in the folder stay."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "step": step,
        "provenance": provenance or {},
        "metrics": metrics or {},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write(folder / WEIGHTS_FILE, save(state))
    atomic_write(folder / CONFIG_FILE, json.dumps(meta, indent=2).encode())
    return folder


def convert_official(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Official ``ckpt_*.pth`` -> our folder format, keeping the iteration step and provenance."""
    model, info = load_reconstructor(source)
    provenance = {"converted_from": Path(source).name, "origin": "One-2-3-45 official reconstruction checkpoint"}
    return save_checkpoint(out_dir, model, step=info.step, provenance=provenance)
