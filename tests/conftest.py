"""Shared fixtures: real meshes from ../shared/data and small real checkpoints written to disk."""

from __future__ import annotations

from collections.abc import Iterator
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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Small tensors gain nothing from threads, and OpenMP spin-waits on a busy shared CPU cost up to 10x."""
    import cv2

    threads, cv_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(threads)
    cv2.setNumThreads(cv_threads)
