"""Zero123's camera projection ``cc_projection``: [CLIP image embedding, pose vector] -> one context token.

Published folders disagree on the component's name and key layout (A4): kxic's ``cc_projection/`` holds
``projection.weight/bias`` (safetensors or a pickled ``.bin``), threestudio's ``clip_camera_projection/``
holds ``proj.weight/bias``, and a bare ``weight/bias`` appears in hand-made exports. All are accepted; we
write ``cc_projection/`` with ``projection.*`` keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError
from ..pickled import load_tensors_only

POSE_DIM = 4
FOLDER_NAMES = ("cc_projection", "clip_camera_projection")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
KEY_PREFIXES = ("projection.", "proj.", "")


class CameraProjection(nn.Module):
    """Linear(embedding + 4 -> context), applied to the concatenated image embedding and pose vector."""

    def __init__(self, embedding_dim: int, context_dim: int) -> None:
        super().__init__()
        self.projection = nn.Linear(embedding_dim + POSE_DIM, context_dim)

    @property
    def embedding_dim(self) -> int:
        return self.projection.in_features - POSE_DIM

    @property
    def context_dim(self) -> int:
        return self.projection.out_features

    def forward(self, embedding: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return self.projection(torch.cat([embedding, pose], dim=-1))

    @classmethod
    def from_tensors(cls, weight: torch.Tensor, bias: torch.Tensor) -> CameraProjection:
        """Build the module with the size the weights imply (768 + 4 -> 768 for the released models)."""
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or weight.shape[1] <= POSE_DIM:
            raise CheckpointError(f"camera projection weights have shapes {tuple(weight.shape)} and {tuple(bias.shape)}: "
                                  f"expected (C, D + {POSE_DIM}) and (C,)")
        module = cls(weight.shape[1] - POSE_DIM, weight.shape[0])
        module.load_state_dict({"projection.weight": weight.float(), "projection.bias": bias.float()})
        return module


def projection_folder(root: Path) -> Path | None:
    """The camera-projection component of a diffusers folder, under either published name."""
    return next((root / name for name in FOLDER_NAMES if (root / name).is_dir()), None)


def load_projection(folder: Path, how_to_get: str) -> CameraProjection:
    """Read the projection from ``folder``; pickled ``.bin`` files are read with ``weights_only=True`` only."""
    path = next((folder / name for name in WEIGHT_NAMES if (folder / name).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder / WEIGHT_NAMES[0]} is missing: {how_to_get}")
    if path.suffix != ".safetensors":
        tensors = load_tensors_only(path, how_to_get)
    else:
        try:
            tensors = load_file(path)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path} cannot be read ({str(exc).splitlines()[0][:160]}): it is truncated or not a "
                                  f"weights file; {how_to_get}") from None
    if not isinstance(tensors, dict):
        raise CheckpointError(f"{path} is not a state dict: {how_to_get}")
    for prefix in KEY_PREFIXES:
        weight, bias = tensors.get(f"{prefix}weight"), tensors.get(f"{prefix}bias")
        if isinstance(weight, torch.Tensor) and isinstance(bias, torch.Tensor):
            return CameraProjection.from_tensors(weight, bias)
    raise CheckpointError(f"{path} holds no camera projection (keys {sorted(tensors)[:6]}; expected projection.weight, "
                          f"proj.weight or weight with their biases): {how_to_get}")


def save_projection(module: CameraProjection, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    save_file(state, folder / WEIGHT_NAMES[0])
    config = {"_class_name": "CCProjection", "in_channel": module.projection.in_features,
              "out_channel": module.context_dim}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
