"""Shared fixtures: real meshes from ../shared/data and small real checkpoints written to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_MESHES = REPO.parent / "shared" / "data" / "meshes"


@pytest.fixture(scope="session")
def shared_meshes() -> Path:
    if not SHARED_MESHES.is_dir():
        pytest.fail(f"{SHARED_MESHES} is missing: tests need ../shared/data beside the repository")
    return SHARED_MESHES


@pytest.fixture()
def seeded() -> None:
    torch.manual_seed(0)
